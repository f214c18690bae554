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

from pipeline.errors import PipelineError
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


#: Per-task tables of metrics.json besides the main mAP@k, each optional.
EXTRA_TABLES = ("map@all", "map@50", "pre@100")


def is_number(v, lo: float | None = None, hi: float | None = None) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))
            and (lo is None or v >= lo) and (hi is None or v <= hi))


def _numbers(v, lo: float | None = None, hi: float | None = None) -> bool:
    return isinstance(v, list) and all(is_number(x, lo, hi) for x in v)


def metrics_problem(m, key: str) -> str | None:
    """What makes ``m`` unusable by the report and the studies, or None."""
    if not isinstance(m, dict):
        return f"not a metrics record (a JSON {type(m).__name__}, not an object)"
    if key not in m:
        found = ", ".join(sorted(k for k in m if k.startswith("map@"))) or "none"
        return f"no {key} (evaluated with another --k? its mAP keys: {found})"
    for name in (key, *[t for t in EXTRA_TABLES if t in m]):
        table = m[name]
        if not isinstance(table, dict) or any(t not in table for t in TASKS):
            return f"{name} must hold a value for every task ({', '.join(TASKS)})"
        bad = next((t for t in TASKS if not is_number(table[t], 0, 1)), None)
        if bad:
            return f"{name}.{bad} = {table[bad]!r} is not a number between 0 and 1"
    chance = m.get("chance")
    if chance is not None and (not isinstance(chance, dict)
                               or any(not isinstance(v, dict) or not all(is_number(x, 0, 1) for x in v.values())
                                      for v in chance.values())):
        return "chance must map each mAP key to per-task numbers between 0 and 1"
    lab = m.get("labels")
    if lab is not None and (not isinstance(lab, dict) or any(
            not is_number(lab.get(f), 0) for f in ("n_query", "n_db", "query_without_relevant",
                                                   "query_unlabelled", "db_unlabelled"))):
        return "labels must hold the counts n_query, n_db, query_without_relevant, query_unlabelled, db_unlabelled"
    r1 = m.get("recall_one@k")
    if r1 is not None and (not isinstance(r1, dict) or not _numbers(r1.get("k"), 1)
                           or any(not _numbers(r1.get(t), 0, 1) or len(r1[t]) != len(r1["k"]) for t in ("i2t", "t2i"))):
        return "recall_one@k must hold k and, per task i2t/t2i, one number between 0 and 1 per k"
    diag = m.get("diagnostics")
    if diag is not None and (not isinstance(diag, dict) or any(v is not None and not is_number(v) for v in diag.values())):
        return "diagnostics must map names to numbers (or null)"
    curves = m.get("curves")
    if curves is not None:
        if not isinstance(curves, dict):
            return "curves must be an object"
        pk = curves.get("p_at_k")
        if pk is not None and (not isinstance(pk, dict) or not _numbers(pk.get("k"))
                               or any(t in pk and (not _numbers(pk[t]) or len(pk[t]) != len(pk["k"])) for t in TASKS)):
            return "curves.p_at_k must hold k and, per task, one number per k"
        pr = curves.get("pr")
        if pr is not None and (not isinstance(pr, dict) or any(
                t in pr and (not isinstance(pr[t], dict) or not _numbers(pr[t].get("precision"))
                             or not _numbers(pr[t].get("recall"))
                             or len(pr[t]["precision"]) != len(pr[t]["recall"])) for t in TASKS)):
            return "curves.pr must hold, per task, precision and recall lists of one length"
    return None


def read_metrics(path: str | os.PathLike, key: str = "map@1000") -> dict:
    """A ``metrics.json`` that the report and the studies can use: one line naming the file and the
    key when it is missing, not JSON, or holds no ``key`` table of numbers for every task (a table
    with a gap would show '–' in the report as if the run had no result)."""
    p = Path(path)
    if p.is_dir():
        raise PipelineError(f"metrics file {p} is a directory")
    if not p.is_file():
        raise PipelineError(f"missing metrics file: {p}")
    try:
        m = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PipelineError(f"{p}: not valid JSON ({str(e).splitlines()[0][:120]}); rerun the evaluate stage") from None
    problem = metrics_problem(m, key)
    if problem:
        raise PipelineError(f"{p}: {problem}; rerun the evaluate stage")
    return m
