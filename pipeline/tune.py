"""Hyper-parameter selection by cross-validation on the database (the ``tune`` target).

CMIMH's paper (Hoang et al., IEEE TNNLS 2023, Section IV-A) sets the loss weights "empirically
by cross validation" and does not say how; this is our protocol, chosen so that the real
queries are never read for any choice:

* validation split (:func:`validation_split`): from the DATABASE rows only, a seeded random
  subset of ``val_queries`` rows is the validation query set, the rest of the database is the
  validation retrieval set, and the training pairs are drawn (seeded) from that rest. With
  ``folds`` = k > 1 the k validation query sets are disjoint slices of one seeded permutation.
* each grid point (:func:`grid_points`: the Cartesian product of ``tune.grid``, keys in the
  fixed order rec, mi, kl, tc, bal, lr, values as listed) trains CMIMH on a fold's training
  pairs and scores validation mAP@k; one Snakemake job per (point, fold).
* selection (:func:`select`): the best mean over folds of (i2t + t2i) / 2; ties go to the point
  that comes first in grid order (a strict ``>`` scan), so the choice is deterministic.

The chosen settings go to ``results/{dataset}/tune/cmimh.json``; method ``cmimh-tuned`` trains
with them (``cmimh train --tuned FILE``, :func:`tuned_settings`); the variants in a method name
(``cmimh-kl2-tuned``) still win over the file. ``tune.epochs`` shortens only the validation runs.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import TERMS, parse_method
from pipeline.errors import PipelineError
from pipeline.io import atomic_output, provenance, sha256_file, without_timings, write_json, write_text

log = logging.getLogger(__name__)

TUNE_FORMAT = "cmimh-tune/1"
#: Grid keys, in the order that defines grid order (and so the tie-break): the loss weights, then lr.
GRID_KEYS = (*TERMS, "lr")
TUNE_DEFAULTS: dict[str, Any] = {
    "grid": {"mi": [0.5, 1, 2], "kl": [0.1, 0.5, 1], "lr": [0.0001, 0.001]},
    "val_queries": 2000,
    "folds": 1,
    "bits": 32,
    "epochs": None,
    "train_size": None,
}
TASK_KEYS = ("i2t", "t2i", "i2i", "t2t")
CRITERION = "mean over folds of (validation mAP@k i2t + t2i) / 2"
TIE_BREAK = "the first point in grid order (keys rec, mi, kl, tc, bal, lr; values as listed) wins a tie"


# ----------------------------------------------------------------------------- settings
def resolve_tune(config: dict, dataset: str | None = None) -> dict:
    """Tune settings of ``dataset``: defaults < ``tune:`` < ``datasets.NAME.tune``.

    Scalar keys merge one by one; a ``grid`` given at a level replaces the whole grid below it
    (a grid is one design, not a sum of lists).
    """
    name = dataset or config["dataset"]
    if name not in config.get("datasets", {}):
        raise PipelineError(f"config: unknown dataset {name!r}")
    out = copy.deepcopy(TUNE_DEFAULTS)
    for level in (config.get("tune"), config["datasets"][name].get("tune")):
        for k, v in (level or {}).items():
            out[k] = copy.deepcopy(v)
    out.update({"dataset": name, "seed": int(config.get("seed", 0)), "eval_k": int(config.get("eval_k", 1000))})
    grid_points(out["grid"])  # validates
    return out


def _fmt(v: float) -> str:
    return np.format_float_positional(float(v), trim="-")


def grid_points(grid: dict[str, list]) -> list[dict[str, float]]:
    """The grid's points in grid order: keys in :data:`GRID_KEYS` order, the last key varying fastest."""
    if not isinstance(grid, dict) or not grid:
        raise PipelineError("tune.grid must map at least one of " + ", ".join(GRID_KEYS) + " to a list of values")
    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise PipelineError(f"tune.grid: unknown key {sorted(unknown)[0]!r} (known: {', '.join(GRID_KEYS)})")
    keys = [k for k in GRID_KEYS if k in grid]
    for k in keys:
        vals = grid[k]
        if not isinstance(vals, list) or not vals:
            raise PipelineError(f"tune.grid.{k}: needs a non-empty list of numbers")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "lr" and v <= 0)
               for v in vals):
            raise PipelineError(f"tune.grid.{k}: values must be numbers >= 0 (lr > 0), got {vals}")
        if len({_fmt(v) for v in vals}) != len(vals):
            raise PipelineError(f"tune.grid.{k}: repeated value in {vals}")
    return [dict(zip(keys, (float(v) for v in combo))) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict[str, float]) -> str:
    """``{mi: 1, kl: 0.5, lr: 0.001}`` -> ``mi1-kl0.5-lr0.001`` (also a valid ``cmimh-`` method suffix)."""
    return "-".join(f"{k}{_fmt(point[k])}" for k in GRID_KEYS if k in point)


def point_from_name(name: str, grid: dict[str, list]) -> dict[str, float]:
    """The grid point called ``name``; one-line error if the grid has none."""
    for p in grid_points(grid):
        if point_name(p) == name:
            return p
    raise PipelineError(f"tune: point {name!r} is not in the grid {grid}")


def tune_for_point(tune: dict, name: str) -> dict:
    """``tune`` with its grid cut down to point ``name``: a point job's params then change only
    when its own settings do (adding grid values does not rerun the other points)."""
    p = point_from_name(name, tune["grid"])
    return {**{k: v for k, v in tune.items() if k != "grid"}, "grid": {k: [v] for k, v in p.items()}}


def point_settings(settings: dict, point: dict[str, float], tune: dict) -> dict:
    """Resolved train settings with a grid point (weights, learning rates) and ``tune.epochs`` applied."""
    out = copy.deepcopy(settings)
    c = out.setdefault("cmimh", {})
    w = c.setdefault("weights", {})
    for k, v in point.items():
        if k in TERMS:
            w[k] = float(v)
        elif k == "lr":
            c["lr"] = c["lr_decoder"] = float(v)
    if tune.get("epochs") is not None:
        c["epochs"] = int(tune["epochs"])
        c["iterations"] = None
    return out


# ----------------------------------------------------------------------------- validation
def validation_split(database: np.ndarray, n_val: int, n_train: int | None, seed: int,
                     fold: int = 0, folds: int = 1) -> dict[str, np.ndarray]:
    """Carve a validation protocol out of the database rows alone.

    Returns sorted row indices ``query`` (``n_val`` rows of a seeded permutation of the database:
    fold ``fold``'s slice), ``database`` (the rest of the database) and ``train`` (``n_train``
    rows drawn from that rest with the seed and fold; all of it when ``n_train`` is None or not
    smaller). The permutation depends only on (seed, n_val, folds), so every grid point sees
    the same split.
    """
    db = np.asarray(database, dtype=np.int64).ravel()
    if len(np.unique(db)) != len(db):
        raise PipelineError("validation split: the database has repeated rows")
    if folds < 1 or not 0 <= fold < folds:
        raise PipelineError(f"validation split: fold {fold} is not in 0..{folds - 1}")
    if n_val < 1 or n_val * folds > len(db) or n_val >= len(db):
        raise PipelineError(f"tune.val_queries {n_val} x folds {folds} does not fit a database of {len(db)} rows "
                            "(the rest must stay as the validation retrieval set)")
    perm = np.random.default_rng([int(seed), int(n_val), int(folds)]).permutation(db)
    query = np.sort(perm[fold * n_val:(fold + 1) * n_val])
    rest = np.setdiff1d(db, query)
    if n_train is None or int(n_train) >= len(rest):
        train = rest.copy()
    else:
        if int(n_train) < 1:
            raise PipelineError(f"tune.train_size must be >= 1, not {n_train}")
        rng = np.random.default_rng([int(seed), int(fold), int(n_train)])
        train = np.sort(rng.choice(rest, size=int(n_train), replace=False))
    return {"query": query, "database": rest, "train": train}


def validation_map(model: Any, image: np.ndarray, text: np.ndarray, labels: np.ndarray,
                   split: dict[str, np.ndarray], k: int) -> dict[str, float]:
    """mAP@k of the four tasks with the split's validation queries against its retrieval set."""
    from pipeline.eval.codes import pack_bits
    from pipeline.eval.metrics import TASKS, map_at_k

    q, db = split["query"], split["database"]
    codes = {"query_image": pack_bits(model.encode_image(image[q])), "query_text": pack_bits(model.encode_text(text[q])),
             "db_image": pack_bits(model.encode_image(image[db])), "db_text": pack_bits(model.encode_text(text[db]))}
    return {t: float(map_at_k(codes[qn], codes[dn], labels[q], labels[db], k)) for t, (qn, dn) in TASKS.items()}


def score(maps: dict[str, float]) -> float:
    """The selection criterion of one fold: cross-modal validation mAP, (i2t + t2i) / 2."""
    return (maps["i2t"] + maps["t2i"]) / 2


def run_point(features: Any, settings: dict, tune: dict, name: str, fold: int, device: Any,
              progress: bool = False) -> dict:
    """Train one grid point on one fold and score it; reads only the database rows of ``features``.

    ``features`` needs ``image``, ``text``, ``labels``, ``database`` and ``train`` (its size is
    the default training-set size); its ``query`` rows are never read.
    """
    from pipeline.methods import train_method

    point = point_from_name(name, tune["grid"])
    s = point_settings(settings, point, tune)
    seed = int(settings["seed"])
    n_train = tune.get("train_size") or len(features.train)
    split = validation_split(features.database, int(tune["val_queries"]), int(n_train), seed,
                             int(fold), int(tune["folds"]))
    t0 = time.perf_counter()
    model, history = train_method("cmimh", features.image[split["train"]], features.text[split["train"]],
                                  int(tune["bits"]), s, seed, device, progress=progress)
    maps = validation_map(model, features.image, features.text, features.labels, split, int(tune["eval_k"]))
    log.info("tune %s fold %d: trained and scored in %.1f s", name, fold, time.perf_counter() - t0)
    return {"point": name, "settings": point, "fold": int(fold), "k": int(tune["eval_k"]),
            f"map@{int(tune['eval_k'])}": maps, "score": score(maps),
            "validation": _validation_keys(tune), "n_val_queries": int(len(split["query"])),
            "n_val_database": int(len(split["database"])), "n_train": int(len(split["train"])),
            "epochs": int(s["cmimh"]["epochs"]), "final": without_timings(history[-1]) if history else None}


def _validation_keys(tune: dict) -> dict:
    return {k: tune.get(k) for k in ("val_queries", "folds", "bits", "epochs", "train_size", "eval_k", "seed")}


def point_stage(features_path: Path, settings: dict, tune: dict, name: str, fold: int, out: Path,
                device: Any, progress: bool = True) -> dict:
    """``cmimh tune point``: one (grid point, fold) -> a validation metrics JSON."""
    from pipeline.features.store import read_features

    feats = read_features(features_path)
    rec = run_point(feats, settings, tune, name, fold, device, progress=progress)
    rec["provenance"] = provenance(settings, stage="tune-point", features_sha256=sha256_file(features_path))
    write_json(out, rec)
    log.info("tune %s fold %d: score %.4f (%s)", name, fold, rec["score"], out)
    return rec


# ----------------------------------------------------------------------------- selection
def select(records: list[dict], tune: dict) -> dict:
    """Pick the best grid point from per-(point, fold) records (:data:`CRITERION`, :data:`TIE_BREAK`).

    Every grid point needs every fold, each once, validated with the current settings; anything
    else is a one-line error (a stale or missing record). Returns ``{chosen, table}``.
    """
    points = grid_points(tune["grid"])
    names = [point_name(p) for p in points]
    folds = int(tune["folds"])
    want = _validation_keys(tune)
    by: dict[str, dict[int, dict]] = {}
    for r in records:
        if r.get("point") not in names:
            raise PipelineError(f"tune: record of point {r.get('point')!r} is not in the grid")
        if r.get("validation") != want:
            raise PipelineError(f"tune: record of {r['point']} fold {r.get('fold')} was made with other "
                                f"validation settings ({r.get('validation')} vs {want})")
        if r["fold"] in by.setdefault(r["point"], {}):
            raise PipelineError(f"tune: two records of {r['point']} fold {r['fold']}")
        by[r["point"]][r["fold"]] = r
    k = int(tune["eval_k"])
    table = []
    for name, p in zip(names, points):
        got = by.get(name, {})
        missing = [f for f in range(folds) if f not in got]
        if missing:
            raise PipelineError(f"tune: no record of point {name} fold {missing[0]}")
        fs = [got[f] for f in range(folds)]
        table.append({"point": name, "settings": p,
                      f"map@{k}": {t: float(np.mean([f[f'map@{k}'][t] for f in fs])) for t in TASK_KEYS},
                      "score": float(np.mean([f["score"] for f in fs])),
                      "fold_scores": [float(f["score"]) for f in fs]})
    best = table[0]
    for row in table[1:]:
        if row["score"] > best["score"]:  # strict: a tie keeps the earlier point
            best = row
    return {"chosen": best, "table": table}


def selection_record(selection: dict, tune: dict, inputs: list[Path]) -> dict:
    """The ``tune/cmimh.json`` document: chosen settings, the full grid table, provenance."""
    return {"format": TUNE_FORMAT, "method": "cmimh", "dataset": tune["dataset"],
            "chosen": selection["chosen"], "criterion": CRITERION, "tie_break": TIE_BREAK,
            "grid": tune["grid"], "validation": _validation_keys(tune), "table": selection["table"],
            "provenance": provenance(None, stage="tune-select",
                                     inputs=[{"path": str(p), "sha256": sha256_file(p)} for p in inputs])}


def tune_markdown(rec: dict) -> str:
    """``studies/tune.md``: the grid's validation results with the chosen point marked."""
    v = rec["validation"]
    k = v["eval_k"]
    keys = [key for key in GRID_KEYS if key in rec["grid"]]
    head = "| # | " + " | ".join(keys) + " | " + " | ".join(("Img→Txt", "Txt→Img", "Img→Img", "Txt→Txt")) + " | score |"
    lines = [f"## Hyper-parameter selection ({rec['dataset']}, {v['bits']} bits, validation mAP@{k} in %; "
             "cross-validation on the database)", "", head, "|---:|" + "---:|" * (len(keys) + 5)]
    chosen = rec["chosen"]["point"]
    for i, row in enumerate(rec["table"], 1):
        mark = "**" if row["point"] == chosen else ""
        cells = [_fmt(row["settings"][key]) for key in keys]
        cells += [f"{100 * row[f'map@{k}'][t]:.2f}" for t in TASK_KEYS] + [f"{mark}{100 * row['score']:.2f}{mark}"]
        lines.append(f"| {i}{' (chosen)' if mark else ''} | " + " | ".join(cells) + " |")
    folds = f"{v['folds']} disjoint folds" if v["folds"] > 1 else "one fold"
    lines += ["", f"Chosen: {', '.join(f'{key} = {_fmt(val)}' for key, val in rec['chosen']['settings'].items())} "
              f"(method `cmimh-tuned` trains with it). Validation queries: {v['val_queries']} database rows drawn "
              f"with the seed ({folds}); retrieval set: the rest of the database; training pairs drawn from that "
              f"rest. The real queries are never used. Score: {CRITERION}; {TIE_BREAK}."
              + (f" Validation runs train for {v['epochs']} epochs." if v.get("epochs") else ""), ""]
    return "\n".join(lines)


def plot_tune(rec: dict, out_png: Path) -> None:
    """Validation score per grid point (grid order), the chosen one highlighted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = rec["table"]
    fig = Figure(figsize=(max(4.0, 0.45 * len(rows) + 1.5), 3.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(rows))
    colors = ["tab:orange" if r["point"] == rec["chosen"]["point"] else "tab:blue" for r in rows]
    ax.bar(x, [100 * r["score"] for r in rows], color=colors)
    ax.set_xticks(x, [r["point"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="validation score (%)", title="Grid search (orange: chosen)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def read_record(path: str | Path, k: int) -> dict:
    """One ``tune point`` record; a missing, damaged or incomplete one is one line naming the file
    and the key (a list, a score that is a string, a record without its point)."""
    from pipeline.eval.evaluate import is_number, metrics_problem

    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"missing tune record: {p}")
    try:
        r = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PipelineError(f"{p}: not valid JSON") from None
    problem = metrics_problem(r, f"map@{k}")
    if problem is None:
        if not isinstance(r.get("point"), str):
            problem = f"no grid point name (point = {r.get('point')!r})"
        elif isinstance(r.get("fold"), bool) or not isinstance(r.get("fold"), int) or r["fold"] < 0:
            problem = f"fold = {r.get('fold')!r} is not a fold number"
        elif not is_number(r.get("score"), 0, 1):
            problem = f"score = {r.get('score')!r} is not a number between 0 and 1"
        elif not isinstance(r.get("validation"), dict):
            problem = "no validation settings"
    if problem:
        raise PipelineError(f"{p}: not a tune record: {problem}; rerun its `cmimh tune point`")
    return r


def select_stage(record_paths: list[Path], tune: dict, out_json: Path, out_md: Path | None = None,
                 out_png: Path | None = None) -> dict:
    """``cmimh tune select``: records -> ``tune/cmimh.json`` (+ ``studies/tune.md`` and a plot)."""
    records = [read_record(p, int(tune["eval_k"])) for p in record_paths]
    rec = selection_record(select(records, tune), tune, [Path(p) for p in record_paths])
    if out_png is not None:
        plot_tune(rec, out_png)
    if out_md is not None:
        write_text(out_md, tune_markdown(rec))
    write_json(out_json, rec)
    log.info("tune: chose %s (score %.4f) -> %s", rec["chosen"]["point"], rec["chosen"]["score"], out_json)
    return rec


# ----------------------------------------------------------------------------- applying
def load_tuned(path: str | Path, dataset: str | None = None) -> dict:
    """Read a ``tune/cmimh.json``; a missing, foreign or other data set's file is one line."""
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"tuned settings file not found: {p} (run `snakemake tune` first)")
    try:
        rec = json.loads(p.read_text())
    except ValueError:
        raise PipelineError(f"{p}: not valid JSON") from None
    if not isinstance(rec, dict) or rec.get("format") != TUNE_FORMAT:
        raise PipelineError(f"{p} is not a tune result (format {rec.get('format') if isinstance(rec, dict) else None!r})")
    if dataset is not None and rec.get("dataset") != dataset:
        raise PipelineError(f"{p} was tuned on data set {rec.get('dataset')!r}, not {dataset!r}")
    return rec


def apply_tuned(settings: dict, rec: dict) -> dict:
    """Resolved train settings with the chosen weights / learning rate of a tune record applied."""
    out = point_settings(settings, rec["chosen"]["settings"], {"epochs": None})
    out["tuned"] = {"point": rec["chosen"]["point"], "score": rec["chosen"]["score"]}
    return out


def tuned_settings(settings: dict, method: str, tuned_path: str | None) -> dict:
    """``cmimh train``'s ``--tuned``: apply the file for a ``-tuned`` method, before its name's variants.

    A ``-tuned`` method without the file, the file without a ``-tuned`` method, or a baseline
    with ``-tuned`` (only CMIMH has a tune target) is a one-line error.
    """
    p = parse_method(method)
    if not p["tuned"]:
        if tuned_path:
            raise PipelineError(f"--tuned applies only to a method ending in -tuned, not {method!r}")
        return settings
    if p["base"] != "cmimh":
        raise PipelineError(f"method {method!r}: only cmimh has a tune target (cmimh-tuned)")
    if not tuned_path:
        raise PipelineError(f"method {method!r} needs --tuned FILE (results/{{dataset}}/tune/cmimh.json)")
    return apply_tuned(settings, load_tuned(tuned_path, settings.get("dataset")))


def tune_settings_from_args(tune_json: str | None, config_path: str | None, dataset: str | None) -> dict:
    """Tune settings from ``--tune JSON`` (the rules) or ``--config FILE [--dataset]`` (by hand)."""
    from pipeline.config import settings_from_args

    t = settings_from_args(tune_json, config_path, dataset, option="--tune", resolver=resolve_tune,
                           check_files=False)
    return {**TUNE_DEFAULTS, **t} if tune_json else t
