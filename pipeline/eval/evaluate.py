"""The ``evaluate`` stage: ``codes.h5`` -> ``metrics.json``.

Any producer's codes can be evaluated (the contract is :mod:`pipeline.eval.codes`); the JSON
records the source file's checksum and the code version so a number can be traced back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from pipeline.eval.codes import Codes, read_codes
from pipeline.eval.metrics import TASKS, evaluate_all, map_at_k
from pipeline.io import provenance, sha256_file, write_json

log = logging.getLogger(__name__)

#: Seed of the random codes behind the chance level (fixed: the chance level is reproducible).
CHANCE_SEED = 0


def chance_level(codes: Codes, k: int = 1000, seed: int = CHANCE_SEED, n_threads: int = 1) -> dict:
    """mAP@k of uniformly random codes (same bits, queries, database and labels), per task.

    The floor a trained model must beat: with random codes the ranking is random, so mAP@k is
    about the relevant fraction of the database.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for task in TASKS:
        q = np.packbits(rng.integers(0, 2, (codes.n_query, codes.bits), dtype=np.uint8).astype(bool), axis=1)
        db = np.packbits(rng.integers(0, 2, (codes.n_db, codes.bits), dtype=np.uint8).astype(bool), axis=1)
        out[task] = map_at_k(q, db, codes.query_labels, codes.db_labels, k, n_threads=n_threads)
    return {f"map@{k}": out}


def label_summary(codes: Codes) -> dict:
    """How many items carry no label, and how many queries have no relevant database item at all.

    Such a query's AP is 0 under every method (relevant = shares a label), so it lowers every mAP
    alike; the report says so instead of showing unexplained low numbers (or 0.00 everywhere when
    the data set has no labels).
    """
    q_lab, db_lab = codes.query_labels.astype(bool), codes.db_labels.astype(bool)
    db_any = db_lab.any(axis=0)
    return {"query_unlabelled": int((~q_lab.any(axis=1)).sum()), "db_unlabelled": int((~db_lab.any(axis=1)).sum()),
            "query_without_relevant": int((~(q_lab & db_any).any(axis=1)).sum()),
            "n_query": codes.n_query, "n_db": codes.n_db}


def evaluate_file(codes_h5: str | os.PathLike, out_json: str | os.PathLike, k: int = 1000, *,
                  chance: bool = True, n_threads: int = 1) -> dict:
    """Evaluate ``codes_h5`` (all four tasks) and write ``out_json`` atomically; return the dict.

    Layout: see :func:`pipeline.eval.metrics.evaluate_all`, plus ``chance`` (random-code mAP@k,
    when ``chance``), ``seconds`` and ``provenance`` (code version, libraries, source checksum).
    """
    codes_h5 = Path(codes_h5)
    t0 = time.perf_counter()
    codes = read_codes(codes_h5)
    metrics = evaluate_all(codes, k=k, n_threads=n_threads)
    metrics["labels"] = label_summary(codes)
    lab = metrics["labels"]
    if lab["query_without_relevant"] or lab["db_unlabelled"]:
        log.warning("evaluate: %d of %d queries have no relevant database item (%d carry no label) and %d of %d "
                    "database items carry no label: those queries score AP 0 under any method",
                    lab["query_without_relevant"], lab["n_query"], lab["query_unlabelled"], lab["db_unlabelled"],
                    lab["n_db"])
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
