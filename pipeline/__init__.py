"""CMIMH: unsupervised cross-modal hashing as a reproducible pipeline.

Stages (one module each, one ``cmimh`` subcommand each):
``prepare`` (pipeline.data) -> ``extract`` (pipeline.features) -> ``train`` (pipeline.model)
-> ``encode`` (pipeline.model.encode) -> ``evaluate`` (pipeline.eval) -> ``report`` (pipeline.report)
and ``search`` (pipeline.search) over the index built by ``encode``.
"""

__version__ = "0.1.0"
