"""The ``tune`` stage (rule ``tune_select``): choose each method's settings from its grid points'
validation runs (:class:`pipeline.report.studies.Tune`) -> ``results/{dataset}/tune/{method}.json``
(what ``<method>-tuned`` trains with), ``studies/tune.md`` and a plot."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def run(t: dict, results: Path, out_dir: Path, out_md: Path | None = None, out_png: Path | None = None) -> dict:
    """Select from the validation runs under ``results``; write one choice file per tuned method."""
    from pipeline.io import provenance, sha256_file, write_json, write_text
    from pipeline.report.studies import (CRITERION, STUDIES, TIE_BREAK, TUNE_FORMAT, load_study_metrics, metrics_path,
                                         study_key)

    study = STUDIES["tune"]
    runs = study.runs(t)
    key = study_key(Path(results), runs, int(t["eval_k"]))  # map@k, or the paired mAP without labels
    metrics = load_study_metrics(Path(results), runs, key)
    selection = study.select(t, metrics, key)
    validation = {k: t[k] for k in ("val_queries", "folds", "bits", "epochs", "train_size", "eval_k", "seed")}
    for method, sel in selection.items():
        inputs = [metrics_path(Path(results), r) for r in runs if r.group == method]
        write_json(Path(out_dir) / f"{method}.json", {
            "format": TUNE_FORMAT, "method": method, "dataset": t["dataset"], "chosen": sel["chosen"],
            "criterion": CRITERION if key.startswith("map@") else CRITERION.replace("mAP@k", "paired mAP"),
            "tie_break": TIE_BREAK, "grid": t["grid"][method], "validation": validation,
            "table": sel["table"],
            "provenance": provenance(None, stage="tune", inputs=[{"path": str(p), "sha256": sha256_file(p)}
                                                                 for p in inputs])})
        log.info("tune %s: chose %s (score %.4f)", method, sel["chosen"]["point"], sel["chosen"]["score"])
    if out_png is not None:
        study.plot_tune(selection, Path(out_png))
    if out_md is not None:
        write_text(out_md, study.markdown_tune(t, selection, key))
    return selection


def load_choice(path: str | Path, method: str, dataset: str | None = None) -> dict:
    """The chosen point of a ``tune/{method}.json`` (``{point, variants, score}``); a missing,
    foreign, other method's or other data set's file is one line."""
    from pipeline.report.studies import TUNE_FORMAT

    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"tuned settings file not found: {p} (run `snakemake tune` first)")
    try:
        rec = json.loads(p.read_text())
    except ValueError:
        raise PipelineError(f"{p}: not valid JSON") from None
    if not isinstance(rec, dict) or rec.get("format") != TUNE_FORMAT:
        raise PipelineError(f"{p} is not a tune result (format {rec.get('format') if isinstance(rec, dict) else None!r})")
    if rec.get("method") != method:
        raise PipelineError(f"{p} tunes method {rec.get('method')!r}, not {method!r}")
    if dataset is not None and rec.get("dataset") != dataset:
        raise PipelineError(f"{p} was tuned on data set {rec.get('dataset')!r}, not {dataset!r}")
    return rec["chosen"]
