"""The ``metrics.json`` contract as its readers (the report, the studies, tune) need it: one reader,
:func:`read_metrics`, that refuses a damaged or incomplete record in one line naming the file and
the key, instead of a report showing '–' for a run as if it had no result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.eval.tasks import PAIRED_KEY, TASK_NAMES as TASKS, tasks_for


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
    for name in (key, *[t for t in EXTRA_TABLES if t in m and t != key]):
        names = [t.name for t in tasks_for(name)]  # a paired key has the two cross-modal tasks
        table = m[name]
        if not isinstance(table, dict) or any(t not in table for t in names):
            return f"{name} must hold a value for every task ({', '.join(names)})"
        bad = next((t for t in names if not is_number(table[t], 0, 1)), None)
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
    with a gap would show '–' in the report as if the run had no result). A run without labels
    (only paired metrics, no ``map@`` table at all) is checked by its paired mAP instead."""
    p = Path(path)
    if p.is_dir():
        raise PipelineError(f"metrics file {p} is a directory")
    if not p.is_file():
        raise PipelineError(f"missing metrics file: {p}")
    try:
        m = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PipelineError(f"{p}: not valid JSON ({str(e).splitlines()[0][:120]}); rerun the evaluate stage") from None
    if isinstance(m, dict) and key.startswith("map@") and key not in m and PAIRED_KEY in m \
            and not any(k.startswith("map@") for k in m):
        key = PAIRED_KEY  # a collection without labels: its headline is the paired mAP
    problem = metrics_problem(m, key)
    if problem:
        raise PipelineError(f"{p}: {problem}; rerun the evaluate stage")
    return m
