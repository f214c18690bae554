"""The ``protocol`` stage (rules ``<name>_protocol_table`` and ``curves_table``): one of the paper's
protocol studies (:data:`pipeline.report.protocols.PROTOCOLS`) as ``results/{dataset}/studies/NAME.md``
and a plot, from its runs' metrics.json in the protocol's results tree and, for a protocol with a
tree of its own, the notes its ``features.h5`` provenance records (sizes shrunk to fit, features kept)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def run(name: str, s: dict, results_root: Path, out_md: Path, out_png: Path | None = None,
        features: Path | None = None) -> str:
    """Write protocol study ``name``'s Markdown (and plot); ``results_root``: the results folder
    holding ``{tree}/<method>/<bits>/metrics.json``; return the text."""
    from pipeline.eval.metrics_json import read_metrics
    from pipeline.eval.tasks import PAIRED_KEY
    from pipeline.io import write_text
    from pipeline.report.protocols import DESCRIPTIONS, PROTOCOLS, features_notes
    from pipeline.report.studies import metrics_path, study_key

    if name not in PROTOCOLS:
        raise PipelineError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    p = PROTOCOLS[name]
    tree = Path(results_root) / s["tree"]
    runs = p.runs(s)
    key = study_key(tree, runs, int(s["eval_k"]))  # map@k, or the paired mAP of a collection without labels
    metrics = {r: read_metrics(metrics_path(tree, r), key) for r in runs}
    key_used = {m: (m if m == "recall_one" or key != PAIRED_KEY else PAIRED_KEY) for m in p.metrics}
    notes, counts = features_notes(features)
    split = s.get("split") or {}
    fill = {"q": counts.get("query", split.get("n_query")), "v": counts.get("validation", split.get("n_val", 0)),
            "t": counts.get("train", split.get("n_train"))}
    desc = DESCRIPTIONS[name]
    if name == "handcrafted" and s.get("source") != "nuswide":  # only NUS-WIDE has the official features
        desc = desc.replace("images as NUS-WIDE's official 500-d bag of SIFT words",
                            "images as the data set's own image features (only NUS-WIDE has the official 500-d "
                            "bag of SIFT words)")
    s = {**s, "description": desc.format(**{k: f"{v:,}" if isinstance(v, int) else v for k, v in fill.items()})}
    text = p.markdown(s, metrics, runs, key_used, notes)
    if out_png is not None:
        p.plot(s, runs, metrics, key_used, Path(out_png))
    write_text(out_md, text)
    log.info("protocol %s: %s", name, out_md)
    return text
