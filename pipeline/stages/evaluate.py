"""The ``evaluate`` stage (rule ``evaluate``): any ``codes.h5`` -> ``metrics.json``.

Any producer's codes can be evaluated (the contract is :mod:`pipeline.eval.codes`): with labels,
every metric of :func:`pipeline.eval.metrics.evaluate_all` for the four tasks, the chance level
and the labels' coverage; with or without labels, the paired metrics on the held-out queries
(:mod:`pipeline.eval.paired`: R@1/5/10, median rank, mAP of the own pair), the only ones for a
collection without labels; and the producer's diagnostics. The JSON records the source file's checksum and the
code version, so a number can be traced back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


def run(codes_h5: str | os.PathLike, out_json: str | os.PathLike, k: int = 1000, *,
        chance: bool = True, n_threads: int = 1) -> dict:
    """Evaluate ``codes_h5`` and write ``out_json`` atomically; return the dict.

    Layout: with labels, see :func:`pipeline.eval.metrics.evaluate_all`, plus ``labels``
    (:func:`~pipeline.eval.metrics.label_summary`); always ``labelled``, ``pair_map`` and
    ``paired`` (:func:`pipeline.eval.paired.paired_metrics`), ``chance`` (random codes' mAP@k and
    paired mAP, when ``chance``), ``diagnostics`` (the producer's), ``seconds`` and ``provenance``.
    """
    from pipeline.errors import PipelineError
    from pipeline.eval.codes import read_codes
    from pipeline.eval.metrics import chance_level, continuous_metrics, evaluate_all, label_summary
    from pipeline.eval.paired import paired_chance, paired_metrics
    from pipeline.io import provenance, sha256_file, write_json

    if k < 1:
        raise PipelineError(f"--k must be >= 1, not {k}")
    codes_h5 = Path(codes_h5)
    t0 = time.perf_counter()
    codes = read_codes(codes_h5)
    labelled = codes.labelled
    if labelled:
        metrics = evaluate_all(codes, k=k, n_threads=n_threads)
        metrics["labels"] = lab = label_summary(codes)
        if lab["query_without_relevant"] or lab["db_unlabelled"]:
            log.warning("evaluate: %d of %d queries have no relevant database item (%d carry no label) and %d of %d "
                        "database items carry no label: those queries score AP 0 under any method",
                        lab["query_without_relevant"], lab["n_query"], lab["query_unlabelled"], lab["db_unlabelled"],
                        lab["n_db"])
        cont = continuous_metrics(codes, k)
        if cont is not None:  # the method's embeddings before binarisation, ranked by cosine
            metrics["continuous"] = cont
    else:  # no labels: the paired metrics are the evaluation
        metrics = {"n_query": codes.n_query, "n_db": codes.n_db, "bits": int(codes.bits)}
    metrics["labelled"] = labelled
    metrics.update(paired_metrics(codes))
    t1 = time.perf_counter()
    if chance:
        metrics["chance"] = {**(chance_level(codes, k, n_threads=n_threads) if labelled else {}),
                             **paired_chance(codes)}
    t2 = time.perf_counter()
    src_prov = codes.attrs.get("provenance")
    if isinstance(src_prov, (bytes, str)):
        try:
            src_prov = json.loads(src_prov)
        except ValueError:
            pass
    diag = codes.attrs.get("diagnostics")  # written by the producer (CMIMH: Table II diagnostics)
    if isinstance(diag, (bytes, str)):
        try:
            metrics["diagnostics"] = json.loads(diag)
        except ValueError:
            log.warning("ignoring unparsable diagnostics attribute in %s", codes_h5)
    metrics["seconds"] = {"metrics": round(t1 - t0, 3), "chance": round(t2 - t1, 3)}
    metrics["provenance"] = provenance(
        None, stage="evaluate", codes=str(codes_h5), codes_sha256=sha256_file(codes_h5), k=int(k),
        relevance=("shares at least one label; paired: " if labelled else "paired: ") + metrics["paired"]["protocol"],
        tie_break="ascending database index", codes_provenance=src_prov,
    )
    write_json(out_json, metrics)
    pm = metrics["paired"]
    log.info("evaluate: %s -> %s (%spaired R@1 i2t %.4f t2i %.4f, %.1fs)", codes_h5, out_json,
             f"mAP@{k} i2t {metrics[f'map@{k}']['i2t']:.4f} t2i {metrics[f'map@{k}']['t2i']:.4f}; " if labelled else "",
             pm["i2t"]["r@1"], pm["t2i"]["r@1"], t2 - t0)
    return metrics
