"""The paper's studies as tables and plots (CMIMH, Hoang et al., IEEE TNNLS 2023, Section IV-B/C).

Each study is one object (:class:`Study`: its runs, table, plot and caption) in the registry
:data:`STUDIES`; its runs are ordinary runs ``results/{dataset}/{method}/{bits}/metrics.json``
whose method names carry the variant (:func:`pipeline.methods.parse_method`), so the train,
encode and evaluate rules serve every study unchanged:

=============  ==========================  =====================================================
study          the paper                   runs
=============  ==========================  =====================================================
code_lengths   Table III (per method)      every method of ``methods`` x ``code_lengths``
mi_sweep       Figure 1                    ``cmimh-mi<w>`` at ``bits``: the JS-MI weight (eq. 14)
kl_sweep       Figure 3                    ``cmimh-kl<w>`` at ``bits``: the symmetrised-KL weight
train_size     Table IX                    ``<method>-ntrain<n>`` x ``train_size_bits``
critic_input   Table I                     ``cmimh`` (critic on p) and ``cmimh-samples<K>``
ablation       Table IV                    ``cmimh_no_<term>`` at ``ablation.bits``
tc_study       Table II                    ``cmimh`` and ``cmimh_no_tc`` x ``tc_bits``
tune           "by cross validation"       each grid point of ``tune.grid`` on each validation fold
               (section IV-A)              (``cmimh-mi1-kl0.5-val0``): see :class:`Tune`
=============  ==========================  =====================================================

:func:`study_runs` is the one list of runs a study needs: the Snakemake rules take their inputs
from it and the tables read the same runs, so the plan and the table cannot disagree. With
``studies.epochs`` set, every CMIMH run of a study carries ``-epochs<n>`` (its own results
folder), so a shortened study never overwrites or reuses the full-length runs.

The paper's extracted text lost the swept values of Figures 1 and 3; the default sweeps
``[0, 0.1, 0.5, 1, 2, 5]`` are ours (the text says only "very small" and "too large" weights).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import merge
from pipeline.errors import PipelineError
from pipeline.eval.tasks import CROSS_MODAL, PAIRED_KEY, headline_key, metric_label, tasks_for
from pipeline.methods import REGISTRY, fmt_number, parse_method
from pipeline.report import figures
from pipeline.report.tables import VARIANT_NAMES, ablation_table, metric_table, pct

log = logging.getLogger(__name__)

#: ``studies:`` defaults (config.yaml may override any key, globally or per data set).
STUDY_DEFAULTS: dict[str, Any] = {
    "report": [],                             # studies whose tables go into report.md
    "bits": 32,                               # mi_sweep, kl_sweep, critic_input (the paper: 32 bits)
    "code_lengths": [16, 32, 48, 64, 128],
    "mi_weights": [0, 0.1, 0.5, 1, 2, 5],
    "kl_weights": [0, 0.1, 0.5, 1, 2, 5],
    "train_sizes": [5000, 10000, 20000],      # Table IX (NUS-WIDE)
    "train_size_bits": [16, 32, 48],
    "train_size_methods": ["cmimh", "djsrh"],
    "critic_samples": [1, 5, 10, 20],         # Table I
    "tc_bits": [16, 32, 48],                  # Table II
    "epochs": None,                           # None: the cmimh epochs; n: every CMIMH study run gets -epochs<n>
    "ablation_variants": ["cmimh", "cmimh_no_rec", "cmimh_no_mi", "cmimh_no_kl", "cmimh_no_tc", "cmimh_no_bal"],
    "seeds": 3,                               # comparison: repetitions (-seed<k>) behind each mean ± std
    "comparison_bits": [16, 32, 64],
    "comparison_methods": None,               # None: the methods of `methods` (base names)
    # code_lengths (Table III): every method of the paper's comparison we implement
    "code_lengths_methods": ["cmimh", "cvh", "cmfh", "ccaitq", "djsrh", "pdh", "acq", "fsh"],
}
#: ``tune:`` defaults: the grid of each method (its variant keys -> values), the validation protocol.
TUNE_DEFAULTS: dict[str, Any] = {
    "grid": {"cmimh": {"mi": [0.5, 1, 2], "kl": [0.1, 0.5, 1], "lr": [0.0001, 0.001]}},
    "val_queries": 2000,
    "folds": 1,
    "bits": 32,
    "epochs": None,
    "train_size": None,
}
TUNE_FORMAT = "cmimh-tune/2"
CRITERION = "mean over folds of (validation mAP@k i2t + t2i) / 2"
TIE_BREAK = "the first point in grid order (the method's variant keys in order; values as listed) wins a tie"



@dataclass(frozen=True)
class Run:
    """One run of a study: its results folder (method, bits), the value it stands for, its group."""

    method: str
    bits: int
    value: Any
    group: str


# ----------------------------------------------------------------------------- settings
def study_settings(view: dict) -> dict:
    """A data set's study settings (``view``: :func:`pipeline.config.dataset_view`): the defaults
    under ``studies:`` (global, then the data set's), with ``methods``, ``eval_k`` and the data set."""
    s = merge(STUDY_DEFAULTS, view.get("studies"))
    unknown = [n for n in s["report"] if n not in STUDIES]
    if unknown:
        raise PipelineError(f"config: studies.report: unknown study {unknown[0]!r} (known: {', '.join(STUDIES)})")
    s.update({"dataset": view["dataset"], "methods": list(view.get("methods", ["cmimh"])),
              "eval_k": int(view.get("eval_k", 1000)),
              "tuned_methods": list(tune_settings(view, None)["grid"])})
    if s["comparison_methods"] is None:
        s["comparison_methods"] = list(dict.fromkeys(parse_method(m).base for m in s["methods"]))
    if s["code_lengths_methods"] is None:
        s["code_lengths_methods"] = list(s["methods"])
    for m in s["code_lengths_methods"]:
        parse_method(m)  # an unknown name is one line now, not a missing rule later
    return s


def tune_settings(view: dict, config: dict | None) -> dict:
    """A data set's tune settings: defaults < ``tune:`` < ``datasets.NAME.tune``, scalar keys one by
    one; a ``grid`` given at a level replaces the whole grid below it (a grid is one design, not a
    sum of lists). ``config``: the raw config, for that rule (None: the view's merged grid)."""
    out = merge(TUNE_DEFAULTS, {k: v for k, v in (view.get("tune") or {}).items() if k != "grid"})
    grid = TUNE_DEFAULTS["grid"]
    if config is not None:
        for level in ((config.get("tune") or {}), (config["datasets"][view["dataset"]].get("tune") or {})):
            if "grid" in level:
                grid = level["grid"]
    elif (view.get("tune") or {}).get("grid"):
        grid = view["tune"]["grid"]
    out["grid"] = grid
    out.update({"dataset": view["dataset"], "seed": int(view.get("seed", 0)), "eval_k": int(view.get("eval_k", 1000))})
    for method in out["grid"]:
        grid_points(method, out["grid"][method])  # validates
    return out


# ----------------------------------------------------------------------------- runs
def with_epochs(method: str, epochs: int | None) -> str:
    """``method`` with ``-epochs<n>`` (before a final ``-tuned``) when a study shortens training
    (``studies.epochs``: CMIMH's runs, the expensive ones); a name that already sets epochs, or
    another method, is unchanged."""
    if epochs is None:
        return method
    m = parse_method(method)
    if m.base != "cmimh" or "epochs" in m.variants:
        return method
    return m.with_variants(epochs=int(epochs))


def metrics_path(results: Path, run: Run) -> Path:
    return Path(results) / run.method / str(run.bits) / "metrics.json"


def load_study_metrics(results: Path, runs: list[Run], key: str) -> dict[Run, dict]:
    """``{run: metrics}``; a missing, damaged or other-``key`` file is one clear error
    (:func:`pipeline.eval.metrics_json.read_metrics`)."""
    from pipeline.eval.metrics_json import read_metrics

    return {r: read_metrics(metrics_path(results, r), key) for r in runs}


def _size(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _columns_table(first: str, cols: list[str], rows: list[tuple[str, list[str]]]) -> str:
    out = [f"| {first} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(out)


def _num(v: float | None, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


# ----------------------------------------------------------------------------- the studies
class Study:
    """One of the paper's studies: which runs it needs, its table, its plot, its caption.

    ``runs(s)`` is the one list of runs: the Snakemake rules take their inputs from it and the
    table reads the same runs, so the plan and the table cannot disagree.
    """

    name: str = ""
    title: str = ""
    reference: str = ""  # where the paper has it

    def runs(self, s: dict) -> list[Run]:
        raise NotImplementedError

    def table(self, runs: list[Run], m: dict[Run, dict], key: str) -> str:
        raise NotImplementedError

    def caption(self, s: dict, runs: list[Run]) -> str:
        """The sentence under the table: what was varied, everything else as configured."""
        raise NotImplementedError

    def plot(self, runs: list[Run], m: dict[Run, dict], key: str, out_png: Path) -> None:
        raise NotImplementedError

    def markdown(self, s: dict, metrics: dict[Run, dict], runs: list[Run], k: int, results: Path | None = None,
                 key: str | None = None) -> str:
        """The study's Markdown section: title, table (``key``: mAP@k, or the paired mAP of a
        collection without labels; in %), caption, the runs."""
        bits = sorted({r.bits for r in runs})
        bits_txt = f"{bits[0]} bits" if len(bits) == 1 else "bits " + ", ".join(map(str, bits))
        key = key or f"map@{k}"
        lines = [f"## {self.title} ({s['dataset']}, {bits_txt}, {metric_label(key)} in %; {self.reference})", "",
                 self.table(runs, metrics, key), "", self.caption(s, runs), ""]
        if s.get("epochs") is not None and any("epochs" in parse_method(r.method).variants for r in runs):
            lines += [f"CMIMH runs of this study train for {int(s['epochs'])} epochs (studies.epochs), "
                      "not the configured cmimh epochs.", ""]
        runs_txt = ", ".join(f"`{m}`" for m in dict.fromkeys(r.method for r in runs))
        lines += [f"Runs (results/{s['dataset']}/<method>/<bits>/): {runs_txt}. Plot: studies/{self.name}.png.", ""]
        return "\n".join(lines)


class CodeLengths(Study):
    name, title, reference = "code_lengths", "Code lengths", "the paper's Table III layout"

    def runs(self, s):
        return [Run(with_epochs(m, s["epochs"]), int(b), int(b), m) for m in s["code_lengths_methods"]
                for b in s["code_lengths"]]

    def table(self, runs, m, key):
        by: dict[str, dict[int, dict]] = {}
        for r in runs:
            by.setdefault(r.group, {})[r.bits] = m[r]
        return metric_table(by, key, list(dict.fromkeys(r.bits for r in runs)))

    def caption(self, s, runs):
        return "Each cell trains the row's method at the column's code length; every other setting as configured."

    def plot(self, runs, m, key, out_png):
        tasks = tasks_for(key)
        fig, axes = figures.figure(len(tasks), 3.6, 3.0)
        groups = list(dict.fromkeys(r.group for r in runs))
        bits = list(dict.fromkeys(r.bits for r in runs))
        idx = {(r.group, r.bits): r for r in runs}
        for ax, t in zip(axes, tasks):
            figures.lines(ax, [str(b) for b in bits], {g: [100 * m[idx[(g, b)]][key][t.name] for b in bits]
                                                       for g in groups}, "bits", f"{key} (%)")
            ax.set_title(t.label)
        figures.save(fig, out_png)


class WeightSweep(Study):
    """Figures 1 and 3: CMIMH with one loss weight swept (``cmimh-<term><w>``)."""

    def __init__(self, term: str, name: str, title: str, reference: str, what: str) -> None:
        self.term, self.name, self.title, self.reference, self.what = term, name, title, reference, what

    def runs(self, s):
        return [Run(with_epochs(f"cmimh-{self.term}{fmt_number(w)}", s["epochs"]), int(s["bits"]), float(w), "cmimh")
                for w in s[f"{self.term}_weights"]]

    def table(self, runs, m, key):
        cols = [f"{self.term} = {fmt_number(r.value)}" for r in runs]
        return _columns_table("Task", cols, [(t.label, [pct(m[r][key][t.name]) for r in runs]) for t in tasks_for(key)])

    def caption(self, s, runs):
        return (f"Each column trains CMIMH with the weight of {self.what} in eq. 14 set to the value shown; "
                "every other setting as configured. (The paper's extracted text lost its swept values; these are ours.)")

    def plot(self, runs, m, key, out_png):
        fig, axes = figures.figure(1, 5.0, 3.4)
        figures.lines(axes[0], [fmt_number(r.value) for r in runs],
                      {t.label: [100 * m[r][key][t.name] for r in runs] for t in tasks_for(key)},
                      f"weight w_{self.term} ({self.what.split('(')[0].strip()})", f"{key} (%)")
        axes[0].set_title(self.title)
        figures.save(fig, out_png)


class TrainSize(Study):
    name, title, reference = "train_size", "Training-set size", "the paper's Table IX"

    def runs(self, s):
        for m in s["train_size_methods"]:
            if m not in REGISTRY:
                raise PipelineError(f"studies.train_size_methods: {m!r} is not a base method ({', '.join(REGISTRY)})")
        return [Run(with_epochs(f"{m}-ntrain{int(n)}", s["epochs"]), int(b), int(n), m)
                for b in s["train_size_bits"] for m in s["train_size_methods"] for n in s["train_sizes"]]

    def table(self, runs, m, key):
        sizes = list(dict.fromkeys(r.value for r in runs))
        idx = {(r.bits, r.group, r.value): r for r in runs}
        lines = ["| L | Task | Method | " + " | ".join(_size(n) for n in sizes) + " |",
                 "|---:|---|---|" + "---:|" * len(sizes)]
        for b in dict.fromkeys(r.bits for r in runs):
            for t in tasks_for(key):
                for g in dict.fromkeys(r.group for r in runs):
                    lines.append(f"| {b} | {t.label} | {g} | "
                                 + " | ".join(pct(m[idx[(b, g, n)]][key][t.name]) for n in sizes) + " |")
        return "\n".join(lines)

    def caption(self, s, runs):
        return ("Each column trains on that many pairs drawn at random from the database with the seed "
                "(the -ntrain<n> variant), not the fixed training split; queries and database are unchanged.")

    def plot(self, runs, m, key, out_png):
        bits = list(dict.fromkeys(r.bits for r in runs))
        sizes = list(dict.fromkeys(r.value for r in runs))
        groups = list(dict.fromkeys(r.group for r in runs))
        idx = {(r.bits, r.group, r.value): r for r in runs}
        fig, axes = figures.figure(len(bits), 4.2, 3.4)
        for ax, b in zip(axes, bits):
            figures.lines(ax, [_size(n) for n in sizes],
                          {f"{g} {t.label}": [100 * m[idx[(b, g, n)]][key][t.name] for n in sizes]
                           for g in groups for t in CROSS_MODAL}, "training pairs", f"{key} (%)")
            ax.set_title(f"{b} bits")
        figures.save(fig, out_png)


class Bars(Study):
    """A study shown as grouped bars per task (Table I, Table IV)."""

    def bar_label(self, r: Run) -> str:
        raise NotImplementedError

    def plot(self, runs, m, key, out_png):
        fig, axes = figures.figure(1, 6.0, 3.4)
        series = {self.bar_label(r): [100 * m[r][key][t.name] for t in tasks_for(key)] for r in runs}
        figures.bars(axes[0], [t.label for t in tasks_for(key)], series, f"{key} (%)")
        axes[0].set_title(self.title)
        figures.save(fig, out_png)


class CriticInput(Bars):
    name, title, reference = ("critic_input", "Critic input: Bernoulli probabilities vs binary samples",
                              "the paper's Table I")

    def runs(self, s):
        return [Run(with_epochs("cmimh", s["epochs"]), int(s["bits"]), "probs", "cmimh")] + [
            Run(with_epochs(f"cmimh-samples{int(k)}", s["epochs"]), int(s["bits"]), int(k), "cmimh")
            for k in s["critic_samples"]]

    def bar_label(self, r):
        return "Bernoulli p" if r.value == "probs" else f"K = {r.value}"

    def table(self, runs, m, key):
        return _columns_table("Task", [self.bar_label(r) for r in runs],
                              [(t.label, [pct(m[r][key][t.name]) for r in runs]) for t in tasks_for(key)])

    def caption(self, s, runs):
        return ("The JS critic reads the Bernoulli probabilities p (the paper's choice) or K pairs of binary "
                "samples drawn with the straight-through estimator (I_JS averaged over the K pairs).")


class Ablation(Bars):
    name, title, reference = "ablation", "Component ablation", "the paper's Table IV"

    def runs(self, s):
        return [Run(with_epochs(v, s["epochs"]), int(s["bits"]), v, v) for v in s["ablation_variants"]]

    def bar_label(self, r):
        return VARIANT_NAMES.get(r.group, r.group)

    def table(self, runs, m, key):
        return ablation_table({r.group: m[r] for r in runs}, key)

    def caption(self, s, runs):
        return "Each row trains CMIMH with one loss term switched off (its weight set to 0)."


class TCStudy(Study):
    name, title, reference = "tc_study", "Total Correlation regulariser", "the paper's Table II"

    def runs(self, s):
        return [Run(with_epochs(m, s["epochs"]), int(b), m == "cmimh", m)
                for b in s["tc_bits"] for m in ("cmimh", "cmimh_no_tc")]

    def table(self, runs, m, key):
        cols = [f"{r.bits} {'✓' if r.value else '✗'}" for r in runs]
        d = {r: (m[r].get("diagnostics") or {}) for r in runs}
        rows = [("TC | Img", [_num(d[r].get("tc_image"), 3) for r in runs]),
                ("TC | Txt", [_num(d[r].get("tc_text"), 3) for r in runs]),
                ("Corr MSE | Img", [_num(d[r].get("corr_mse_image"), 4) for r in runs]),
                ("Corr MSE | Txt", [_num(d[r].get("corr_mse_text"), 4) for r in runs])]
        short = key.replace("map", "mAP") if key != PAIRED_KEY else "paired mAP"
        rows += [(f"{short} | {t.label}", [pct(m[r][key][t.name]) for r in runs]) for t in tasks_for(key)]
        out = ["| Quantity | | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
        out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
        return "\n".join(out)

    def caption(self, s, runs):
        return ("✓: CMIMH as configured; ✗: without the Total Correlation term (tc = 0). TC is the "
                "discriminator's estimate mean logit C(p) on the database codes; a model trained without the "
                "TC term has no discriminator, so its TC is not estimated (–; the paper estimates it with a "
                "separately trained classifier). Corr MSE = mean((C − I)²) of the database codes' bit correlations.")

    def plot(self, runs, m, key, out_png):
        bits = list(dict.fromkeys(r.bits for r in runs))
        idx = {(r.bits, r.value): r for r in runs}
        fig, axes = figures.figure(2, 4.2, 3.4)
        mk = {True: "with TC", False: "without TC"}
        figures.lines(axes[0], [str(b) for b in bits],
                      {f"{t.label} {mk[w]}": [100 * m[idx[(b, w)]][key][t.name] for b in bits]
                       for t in CROSS_MODAL for w in (True, False)}, "bits", f"{key} (%)")
        figures.lines(axes[1], [str(b) for b in bits],
                      {f"{mod} {mk[w]}": [(m[idx[(b, w)]].get("diagnostics") or {}).get(f"corr_mse_{mod}")
                                          for b in bits]
                       for mod in ("image", "text") for w in (True, False)}, "bits", "Corr MSE")
        axes[0].set_title("mAP")
        axes[1].set_title("Corr MSE of database codes")
        figures.save(fig, out_png)


# ----------------------------------------------------------------------------- tune
def grid_points(method: str, grid: dict[str, list]) -> list[dict[str, float]]:
    """A method's grid points in grid order: keys in the order of the method's variants, the last
    key varying fastest; each point is a set of method-name variants (``{"mi": 1, "kl": 0.5}``)."""
    import itertools

    if method not in REGISTRY:
        raise PipelineError(f"tune.grid: unknown method {method!r} (known: {', '.join(REGISTRY)})")
    keys_known = list(REGISTRY[method].variants)
    if not isinstance(grid, dict) or not grid:
        raise PipelineError(f"tune.grid.{method} must map at least one of {', '.join(keys_known) or '(none)'} "
                            "to a list of values")
    unknown = set(grid) - set(keys_known)
    if unknown:
        raise PipelineError(f"tune.grid.{method}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(keys_known)})")
    keys = [k for k in keys_known if k in grid]
    for k in keys:
        vals = grid[k]
        if not isinstance(vals, list) or not vals:
            raise PipelineError(f"tune.grid.{method}.{k}: needs a non-empty list of numbers")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "lr" and v <= 0)
               for v in vals):
            raise PipelineError(f"tune.grid.{method}.{k}: values must be numbers >= 0 (lr > 0), got {vals}")
        if len({fmt_number(v) for v in vals}) != len(vals):
            raise PipelineError(f"tune.grid.{method}.{k}: repeated value in {vals}")
    return [dict(zip(keys, (float(v) for v in combo))) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict[str, float]) -> str:
    """``{mi: 1, kl: 0.5, lr: 0.001}`` -> ``mi1-kl0.5-lr0.001`` (a method name's variant suffix)."""
    return "-".join(f"{k}{fmt_number(v)}" for k, v in point.items())


def score(maps: dict[str, float]) -> float:
    """The selection criterion of one fold: cross-modal validation mAP, (i2t + t2i) / 2."""
    return (maps["i2t"] + maps["t2i"]) / 2


class Tune(Study):
    """Hyper-parameter selection as the paper did it, "by cross validation", on the database.

    Each grid point of a method, on each validation fold, is an ordinary run named by its
    variants and the fold (``cmimh-mi1-kl0.5-lr0.001-val0``, with ``-epochs<n>`` when
    ``tune.epochs`` shortens the validation runs): trained on pairs of the database, encoded and
    evaluated on validation queries carved from the database (never the real queries: see
    :func:`pipeline.data.splits.validation_split`). The choice (:meth:`select`): the best mean
    over folds of (i2t + t2i) / 2; ties go to the point first in grid order, so it is deterministic.
    """

    name, title, reference = "tune", "Hyper-parameter selection", "cross-validation on the database"

    def point_method(self, method: str, point: dict, fold: int, t: dict) -> str:
        name = f"{method}-{point_name(point)}" if point else method
        m = parse_method(name)
        if t.get("epochs") is not None and "epochs" in m.cls.variants and "epochs" not in m.variants:
            name = m.with_variants(epochs=int(t["epochs"]))
        return parse_method(name).with_variants(val=int(fold))

    def runs(self, t: dict) -> list[Run]:
        return [Run(self.point_method(method, p, f, t), int(t["bits"]), point_name(p), method)
                for method, grid in t["grid"].items() for p in grid_points(method, grid) for f in range(int(t["folds"]))]

    def select(self, t: dict, metrics: dict[Run, dict], key: str | None = None) -> dict[str, dict]:
        """``{method: {chosen, table}}``: each grid point's mean validation scores over the folds,
        and the best (strict ``>`` scan in grid order: a tie keeps the earlier point). ``key``:
        mAP@k (default), or the paired mAP of a collection without labels."""
        k = int(t["eval_k"])
        key = key or f"map@{k}"
        out = {}
        for method, grid in t["grid"].items():
            rows = []
            for p in grid_points(method, grid):
                fs = [metrics[r] for r in self.runs(t) if r.group == method and r.value == point_name(p)]
                rows.append({"point": point_name(p), "variants": p,
                             key: {tk: float(np.mean([f[key][tk] for f in fs])) for tk in (x.name for x in tasks_for(key))},
                             "score": float(np.mean([score(f[key]) for f in fs])),
                             "fold_scores": [float(score(f[key])) for f in fs]})
            best = rows[0]
            for row in rows[1:]:
                if row["score"] > best["score"]:  # strict: a tie keeps the earlier point
                    best = row
            out[method] = {"chosen": best, "table": rows}
        return out

    def table(self, runs, m, key):  # pragma: no cover - the tune stage writes its own tables (markdown_tune)
        raise NotImplementedError

    def caption(self, t, runs):
        folds = f"{t['folds']} disjoint folds" if t["folds"] > 1 else "one fold"
        return (f"Validation queries: {t['val_queries']} database rows drawn with the seed ({folds}); retrieval set: "
                f"the rest of the database; training pairs drawn from that rest. The real queries are never used. "
                f"Score: {CRITERION}; {TIE_BREAK}." + (f" Validation runs train for {t['epochs']} epochs."
                                                        if t.get("epochs") else ""))

    def markdown_tune(self, t: dict, selection: dict[str, dict], key: str | None = None) -> str:
        """``studies/tune.md``: each method's grid with its validation results, the chosen point marked."""
        k = int(t["eval_k"])
        key = key or f"map@{k}"
        tasks = tasks_for(key)
        lines = [f"## {self.title} ({t['dataset']}, {t['bits']} bits, validation {metric_label(key)} in %; "
                 f"{self.reference})", ""]
        for method, sel in selection.items():
            rows = sel["table"]
            keys = list(rows[0]["variants"])
            lines += [f"### {method}", "", "| # | " + " | ".join(keys) + " | "
                      + " | ".join(x.label for x in tasks) + " | score |", "|---:|" + "---:|" * (len(keys) + len(tasks) + 1)]
            for i, row in enumerate(rows, 1):
                mark = "**" if row["point"] == sel["chosen"]["point"] else ""
                cells = [fmt_number(row["variants"][kk]) for kk in keys]
                cells += [pct(row[key][x.name]) for x in tasks] + [f"{mark}{pct(row['score'])}{mark}"]
                lines.append(f"| {i}{' (chosen)' if mark else ''} | " + " | ".join(cells) + " |")
            ch = sel["chosen"]
            lines += ["", f"Chosen for {method}: {', '.join(f'{kk} = {fmt_number(v)}' for kk, v in ch['variants'].items())}"
                      f" (method `{method}-tuned` trains with it).", ""]
        lines += [self.caption(t, []), ""]
        return "\n".join(lines)

    def plot_tune(self, selection: dict[str, dict], out_png: Path) -> None:
        """Validation score per grid point (grid order), the chosen one highlighted, one panel a method."""
        fig, axes = figures.figure(len(selection), 1.0, 3.4)
        for ax, (method, sel) in zip(axes, selection.items()):
            rows = sel["table"]
            x = np.arange(len(rows))
            colors = ["tab:orange" if r["point"] == sel["chosen"]["point"] else "tab:blue" for r in rows]
            ax.bar(x, [100 * r["score"] for r in rows], color=colors)
            ax.set_xticks(x, [r["point"] for r in rows], rotation=60, ha="right", fontsize=7)
            ax.set(ylabel="validation score (%)", title=f"{method} (orange: chosen)")
            ax.grid(alpha=0.3, axis="y")
        fig.set_size_inches(max(4.0, sum(0.45 * len(s["table"]) + 1.5 for s in selection.values())), 3.4)
        figures.save(fig, out_png)


# ----------------------------------------------------------------------------- comparison
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) over the repetitions."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def pm(values: list[float]) -> str:
    """``mean ± std`` in %, two decimals; one value alone as it is."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if len(values) > 1 else f"{100 * mean:.2f}"


class Comparison(Study):
    """Every method at its defaults and as tuned (``<method>-tuned``), each cell the mean ± std
    over ``seeds`` repetitions (``-seed<k>``: other initialisations and mini-batch orders on the
    same split), with a continuous reference: cosine ranking in the tuned CCA space (CCA-ITQ's
    projections before the sign), which shows what binarisation costs."""

    name, title, reference = ("comparison", "Methods compared, tuned and at their defaults",
                              "the paper's Table III, mean ± std over seeds")

    def runs(self, s):
        out = []
        for tuned in (True, False):
            for m in s["comparison_methods"]:
                if tuned and m not in s["tuned_methods"]:
                    continue
                for b in s["comparison_bits"]:
                    for k in range(int(s["seeds"])):
                        name = m + (f"-seed{k}" if k else "") + ("-tuned" if tuned else "")
                        out.append(Run(parse_method(name).name, int(b), k, ("tuned" if tuned else "default", m)))
        return out

    def _cells(self, runs, m, key, kind, part=None):
        groups: dict[tuple, dict[int, list[float]]] = {}
        for r in runs:
            if r.group[0] != kind:
                continue
            src = m[r] if part is None else (m[r].get(part) or {})
            for t in tasks_for(key):
                v = (src.get(key) or {}).get(t.name)
                if v is not None:
                    groups.setdefault((t.name, r.group[1]), {}).setdefault(r.bits, []).append(v)
        return groups

    def _table(self, runs, m, key, kind, bits):
        cells = self._cells(runs, m, key, kind)
        methods = list(dict.fromkeys(r.group[1] for r in runs if r.group[0] == kind))
        lines = ["| Task | Method | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|---|" + "---:|" * len(bits)]
        ref = self._cells(runs, m, key, "tuned", part="continuous") if kind == "tuned" else {}
        for t in tasks_for(key):
            for meth in methods:
                by = cells.get((t.name, meth), {})
                lines.append(f"| {t.label} | {meth} | " + " | ".join(pm(by.get(b, [])) for b in bits) + " |")
            for meth in methods:
                if (t.name, meth) in ref:
                    by = ref[(t.name, meth)]
                    lines.append(f"| {t.label} | {meth}, continuous (cosine, no hashing) | "
                                 + " | ".join(pm(by.get(b, [])) for b in bits) + " |")
        return "\n".join(lines)

    def table(self, runs, m, key):
        bits = list(dict.fromkeys(r.bits for r in runs))
        out = []
        if any(r.group[0] == "tuned" for r in runs):
            out += ["Tuned (each method's `-tuned` runs: the settings its tune grid chose on the validation split):", "",
                    self._table(runs, m, key, "tuned", bits), ""]
        out += ["At their defaults:", "", self._table(runs, m, key, "default", bits)]
        return "\n".join(out)

    def caption(self, s, runs):
        return (f"Each cell: mean ± standard deviation (sample, ddof 1) over {s['seeds']} repetitions (-seed<k>: other "
                "initialisations and mini-batch orders on the same split and features). The continuous rows rank by "
                "cosine similarity of the method's projections before binarisation (no hashing).")

    def markdown(self, s, metrics, runs, k, results=None, key=None):
        text = super().markdown(s, metrics, runs, k, results, key=key)
        chosen = []
        for meth in s["comparison_methods"]:
            f = Path(results) / "tune" / f"{meth}.json" if results is not None else None
            if meth in s["tuned_methods"] and f is not None and f.is_file():
                c = json.loads(f.read_text())["chosen"]
                chosen.append(f"{meth}: " + ", ".join(f"{kk} = {fmt_number(v)}" for kk, v in c["variants"].items()))
        if chosen:
            text = text.rstrip("\n") + "\n\nSettings the tune target chose: " + "; ".join(chosen) + ".\n"
        return text

    def plot(self, runs, m, key, out_png):
        bits = list(dict.fromkeys(r.bits for r in runs))
        b = 32 if 32 in bits else bits[len(bits) // 2]
        kind = "tuned" if any(r.group[0] == "tuned" for r in runs) else "default"
        cells = self._cells([r for r in runs if r.bits == b], m, key, kind)
        methods = list(dict.fromkeys(r.group[1] for r in runs if r.group[0] == kind))
        series = {meth: [100 * mean_std(cells.get((t.name, meth), {}).get(b, [0.0]))[0] for t in CROSS_MODAL]
                  for meth in methods}
        errors = {meth: [100 * mean_std(cells.get((t.name, meth), {}).get(b, [0.0]))[1] for t in CROSS_MODAL]
                  for meth in methods}
        fig, axes = figures.figure(1, 6.0, 3.4)
        figures.bars(axes[0], [t.label for t in CROSS_MODAL], series, f"{key} (%)", errors=errors)
        axes[0].set_title(f"{self.title} ({kind}, {b} bits)")
        figures.save(fig, out_png)


#: Every study, by name (the order of ``snakemake studies``; ``tune`` is its own target).
STUDIES: dict[str, Study] = {s.name: s for s in (
    CodeLengths(),
    WeightSweep("mi", "mi_sweep", "JS-MI weight sweep", "the paper's Figure 1",
                "the inter-modal Jensen–Shannon MI term (w_mi)"),
    WeightSweep("kl", "kl_sweep", "Symmetrised-KL weight sweep", "the paper's Figure 3",
                "the symmetrised Bernoulli KL term (w_kl)"),
    TrainSize(), CriticInput(), Ablation(), TCStudy(), Comparison(), Tune())}
#: The studies of ``snakemake studies`` (all but tune, which has its own target).
PAPER_STUDIES: tuple[str, ...] = tuple(n for n in STUDIES if n != "tune")


def study_runs(name: str, s: dict) -> list[Run]:
    """The runs study ``name`` needs under settings ``s`` (:func:`study_settings`, or the tune settings)."""
    if name not in STUDIES:
        raise PipelineError(f"unknown study {name!r} (known: {', '.join(STUDIES)})")
    return STUDIES[name].runs(s)


def study_metrics_files(results: str | Path, name: str, s: dict) -> list[str]:
    """The metrics.json files of a study (Snakemake inputs), without duplicates, in run order."""
    return list(dict.fromkeys(str(metrics_path(Path(results), r)) for r in study_runs(name, s)))


def study_key(results: Path, runs: list[Run], k: int) -> str:
    """The headline metric of a study's runs: ``map@k`` when evaluated with labels, else the paired
    mAP (a collection without labels); read from the first run's metrics.json."""
    for r in runs:
        p = metrics_path(Path(results), r)
        if p.is_file():
            try:
                return headline_key(json.loads(p.read_text()), k)
            except ValueError:
                break
    return f"map@{k}"
