"""The ``study`` stage (rules ``<name>_table``): one of the paper's studies as a Markdown table
(``results/{dataset}/studies/NAME.md``) and a plot, from its runs' metrics.json
(:data:`pipeline.report.studies.STUDIES`)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def run(name: str, s: dict, results: Path, out_md: Path, out_png: Path | None = None, k: int | None = None) -> str:
    """Write study ``name``'s table (and plot) from ``results`` = results/{dataset}; return the text."""
    from pipeline.io import write_text
    from pipeline.report.studies import PAPER_STUDIES, STUDIES, load_study_metrics, study_key

    if name not in PAPER_STUDIES:
        raise PipelineError(f"unknown study {name!r} (known: {', '.join(PAPER_STUDIES)}; tune is `cmimh tune`)")
    study = STUDIES[name]
    k = int(k if k is not None else s["eval_k"])
    runs = study.runs(s)
    key = study_key(Path(results), runs, k)  # map@k, or the paired mAP of a collection without labels
    metrics = load_study_metrics(Path(results), runs, key)
    text = study.markdown(s, metrics, runs, k, Path(results), key=key)
    if out_png is not None:
        study.plot(runs, metrics, key, Path(out_png))
    write_text(out_md, text)
    log.info("study %s: %s", name, out_md)
    return text
