"""Retrieval and evaluation: the ``codes.h5`` contract, exact Hamming ranking and metrics.

``codes`` (read/write packed codes), ``hamming`` (deterministic top-k ranking, and
:class:`~pipeline.eval.hamming.Database`, codes prepared once for a service), ``kernels`` (the
compiled counting kernels both use; ``numpy_kernels``, their NumPy twins for small problems, which
spare a process numba's start-up; ``words``, codes and labels as 64-bit words), ``metrics`` (mAP@k, P@K, PR, RecallOne@K,
:func:`evaluate_all`: relevance by labels), ``paired`` (R@K, median rank and mAP of the own pair
on the held-out queries: the evaluation of a collection without labels, and a second view of one
with), ``tasks`` (the retrieval tasks and the headline metric of a run).
"""

from pipeline.eval.codes import Codes, pack_bits, read_codes, unpack_bits, write_codes
from pipeline.eval.hamming import hamming_distances, topk
from pipeline.eval.metrics import (
    TASKS,
    evaluate_all,
    map_at_k,
    pr_curve,
    precision_at_k,
    recall_one_at_k,
)

__all__ = [
    "Codes", "pack_bits", "unpack_bits", "read_codes", "write_codes",
    "hamming_distances", "topk",
    "TASKS", "evaluate_all", "map_at_k", "precision_at_k", "pr_curve", "recall_one_at_k",
]
