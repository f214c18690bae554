"""The ``prepare`` stage (rule ``prepare``): download (or generate) and filter a data set into the
raw form every adapter writes (``manifest.jsonl`` + images, :mod:`pipeline.data.manifest`).

One adapter per source in :mod:`pipeline.data` (``demo``, ``mirflickr25k``, ``nuswide``,
``mscoco``, and your own collections: ``folder``, ``table``, ``webdataset``, which share
:mod:`pipeline.data.collection`), each with ``prepare(out_dir, settings, progress=...)``.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

ADAPTERS = ("demo", "mirflickr25k", "nuswide", "mscoco", "folder", "table", "webdataset")


def run(settings: dict, out: Path, progress: bool = True) -> None:
    """Prepare ``settings['dataset']`` into ``out`` (``data/{dataset}/manifest.jsonl``)."""
    out = Path(out)
    if out.name != "manifest.jsonl":
        raise PipelineError(f"prepare output must be named manifest.jsonl, not {out.name}")
    src = settings["source"]
    if src not in ADAPTERS:
        raise PipelineError(f"dataset {settings['dataset']!r}: no prepare adapter for source {src!r}")
    importlib.import_module(f"pipeline.data.{src}").prepare(out.parent, settings, progress=progress)
