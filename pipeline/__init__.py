"""CMIMH: unsupervised cross-modal hashing as a reproducible pipeline.

The stages (:mod:`pipeline.stages`, one module and one ``cmimh`` subcommand each, one Snakemake
rule file each): prepare -> extract -> train -> encode -> evaluate -> report, and study, tune,
search. They compose the components: :mod:`pipeline.data` (data set adapters, the raw form,
splits), :mod:`pipeline.features` (image and text extractors, PCA, ``features.h5``),
:mod:`pipeline.methods` (every hashing method behind one interface), :mod:`pipeline.eval`
(``codes.h5``, Hamming ranking, metrics), :mod:`pipeline.report` (tables, figures, studies) and
:mod:`pipeline.search` (the index); on top of :mod:`pipeline.config`, :mod:`pipeline.settings`,
:mod:`pipeline.io` and :mod:`pipeline.torchkit`.
"""

__version__ = "0.1.0"
