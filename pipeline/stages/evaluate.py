"""The ``evaluate`` stage (rule ``evaluate``): any ``codes.h5`` -> ``metrics.json``.

Any producer's codes can be evaluated (the contract is :mod:`pipeline.eval.codes`): every metric
of :func:`pipeline.eval.metrics.evaluate_all` for the four tasks, the chance level, the labels'
coverage and the producer's diagnostics. The JSON records the source file's checksum and the
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
    """Evaluate ``codes_h5`` (all four tasks) and write ``out_json`` atomically; return the dict.

    Layout: see :func:`pipeline.eval.metrics.evaluate_all`, plus ``labels``
    (:func:`~pipeline.eval.metrics.label_summary`), ``chance`` (random-code mAP@k, when
    ``chance``), ``diagnostics`` (the producer's), ``seconds`` and ``provenance``.
    """
    from pipeline.errors import PipelineError
    from pipeline.eval.codes import read_codes
    from pipeline.eval.metrics import chance_level, continuous_metrics, evaluate_all, label_summary
    from pipeline.io import provenance, sha256_file, write_json

    if k < 1:
        raise PipelineError(f"--k must be >= 1, not {k}")
    codes_h5 = Path(codes_h5)
    t0 = time.perf_counter()
    codes = read_codes(codes_h5)
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
    t1 = time.perf_counter()
    if chance:
        metrics["chance"] = chance_level(codes, k, n_threads=n_threads)
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
        relevance="shares at least one label", tie_break="ascending database index",
        codes_provenance=src_prov,
    )
    write_json(out_json, metrics)
    log.info("evaluate: %s -> %s (mAP@%d i2t %.4f t2i %.4f, %.1fs)", codes_h5, out_json, k,
             metrics[f"map@{k}"]["i2t"], metrics[f"map@{k}"]["t2i"], t2 - t0)
    return metrics
