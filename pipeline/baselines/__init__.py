"""The paper's comparison methods (Table III), each behind the same ``Model`` interface.

Modules:

* :mod:`pipeline.baselines.common` -- the linear-hash base class and input checks of the three
  linear methods.
* :mod:`pipeline.baselines.cvh` -- Cross-View Hashing (Kumar & Udupa, IJCAI 2011).
* :mod:`pipeline.baselines.cmfh` -- Collective Matrix Factorization Hashing (Ding, Guo & Zhou,
  CVPR 2014; TIP 2016).
* :mod:`pipeline.baselines.ccaitq` -- CCA-ITQ (Gong, Lazebnik, Gordo & Perronnin, TPAMI 2013).
* :mod:`pipeline.baselines.djsrh` -- Deep Joint-Semantics Reconstructing Hashing (Su, Zhong &
  Zhang, ICCV 2019).
"""
