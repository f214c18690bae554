"""The paper's studies as tables and plots (CMIMH, Hoang et al., IEEE TNNLS 2023, Section IV-B/C).

Each study is a set of ordinary runs ``results/{dataset}/{method}/{bits}/metrics.json`` whose
method names carry the variant (:func:`pipeline.config.parse_method`), so the train, encode and
evaluate rules serve every study unchanged:

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
=============  ==========================  =====================================================

:func:`study_runs` is the one list of runs a study needs: the Snakemake rules take their inputs
from it and the tables read the same runs, so the plan and the table cannot disagree. With
``studies.epochs`` set, every CMIMH run of a study carries ``-epochs<n>`` (its own results
folder), so a shortened study never overwrites or reuses the full-length runs.

The paper's extracted text lost the swept values of Figures 1 and 3; the default sweeps
``[0, 0.1, 0.5, 1, 2, 5]`` are ours (the text says only "very small" and "too large" weights).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.config import BASES, parse_method
from pipeline.errors import PipelineError
from pipeline.io import atomic_output, write_text
from pipeline.report.report import TASKS, VARIANT_NAMES, ablation_table, metric_table

log = logging.getLogger(__name__)

#: The study targets, in the order ``snakemake studies`` lists them.
STUDIES = ("code_lengths", "mi_sweep", "kl_sweep", "train_size", "critic_input", "ablation", "tc_study")

#: ``studies:`` defaults (config.yaml may override any key, globally or per data set).
STUDY_DEFAULTS: dict[str, Any] = {
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
}
ABLATION_VARIANTS = ["cmimh", "cmimh_no_rec", "cmimh_no_mi", "cmimh_no_kl", "cmimh_no_tc", "cmimh_no_bal"]

TITLES = {
    "code_lengths": ("Code lengths", "the paper's Table III layout"),
    "mi_sweep": ("JS-MI weight sweep", "the paper's Figure 1"),
    "kl_sweep": ("Symmetrised-KL weight sweep", "the paper's Figure 3"),
    "train_size": ("Training-set size", "the paper's Table IX"),
    "critic_input": ("Critic input: Bernoulli probabilities vs binary samples", "the paper's Table I"),
    "ablation": ("Component ablation", "the paper's Table IV"),
    "tc_study": ("Total Correlation regulariser", "the paper's Table II"),
}


@dataclass(frozen=True)
class Run:
    """One run of a study: its results folder (method, bits), the value it stands for, its group."""

    method: str
    bits: int
    value: Any
    group: str


# ----------------------------------------------------------------------------- settings
def _merge(base: dict, over: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolve_studies(config: dict, dataset: str | None = None) -> dict:
    """The study settings of ``dataset``: defaults < ``studies:`` < ``datasets.NAME.studies``.

    Adds what the studies read from elsewhere in the config: ``methods`` (code_lengths), the
    ``ablation:`` block (``ablation_bits``, ``ablation_variants``), ``eval_k`` and the data set.
    """
    name = dataset or config["dataset"]
    if name not in config.get("datasets", {}):
        raise PipelineError(f"config: unknown dataset {name!r}")
    s = _merge(STUDY_DEFAULTS, config.get("studies"))
    s = _merge(s, config["datasets"][name].get("studies"))
    abl = config.get("ablation") or {}
    s.update({"dataset": name, "methods": list(config.get("methods", ["cmimh"])),
              "ablation_bits": int(abl.get("bits", s["bits"])),
              "ablation_variants": list(abl.get("variants", ABLATION_VARIANTS)),
              "eval_k": int(config.get("eval_k", 1000))})
    return s


def study_settings_from_args(settings_json: str | None, config_path: str | None, dataset: str | None) -> dict:
    """Study settings from ``--settings JSON`` (the rules) or ``--config FILE [--dataset]`` (by hand)."""
    from pipeline.config import settings_from_args

    s = settings_from_args(settings_json, config_path, dataset, resolver=resolve_studies, check_files=False)
    return _merge(STUDY_DEFAULTS, s) if settings_json else s


# ----------------------------------------------------------------------------- runs
def fmt_number(v: float) -> str:
    """A number as it appears in a method name: ``0.1``, ``1``, ``0.0001`` (never ``1e-04``)."""
    return np.format_float_positional(float(v), trim="-")


def with_epochs(method: str, epochs: int | None) -> str:
    """``method`` with ``-epochs<n>`` (before a final ``-tuned``) when a study shortens training.

    Only CMIMH has an epochs variant; a baseline or a name that already sets epochs is unchanged.
    """
    if epochs is None:
        return method
    p = parse_method(method)
    if p["base"] != "cmimh" or "epochs" in p["variants"]:
        return method
    stem = method[: -len("-tuned")] if p["tuned"] else method
    return f"{stem}-epochs{int(epochs)}" + ("-tuned" if p["tuned"] else "")


def study_runs(name: str, s: dict) -> list[Run]:
    """The runs study ``name`` needs under settings ``s`` (:func:`resolve_studies`)."""
    ep = s.get("epochs")
    bits = int(s["bits"])
    if name == "code_lengths":
        return [Run(with_epochs(m, ep), int(b), int(b), m) for m in s["methods"] for b in s["code_lengths"]]
    if name in ("mi_sweep", "kl_sweep"):
        term = name[:2]
        return [Run(with_epochs(f"cmimh-{term}{fmt_number(w)}", ep), bits, float(w), "cmimh")
                for w in s[f"{term}_weights"]]
    if name == "train_size":
        for m in s["train_size_methods"]:
            if m not in BASES:
                raise PipelineError(f"studies.train_size_methods: {m!r} is not a base method ({', '.join(BASES)})")
        return [Run(with_epochs(f"{m}-ntrain{int(n)}", ep), int(b), int(n), m)
                for b in s["train_size_bits"] for m in s["train_size_methods"] for n in s["train_sizes"]]
    if name == "critic_input":
        return [Run(with_epochs("cmimh", ep), bits, "probs", "cmimh")] + [
            Run(with_epochs(f"cmimh-samples{int(k)}", ep), bits, int(k), "cmimh") for k in s["critic_samples"]]
    if name == "ablation":
        return [Run(with_epochs(v, ep), int(s["ablation_bits"]), v, v) for v in s["ablation_variants"]]
    if name == "tc_study":
        return [Run(with_epochs(m, ep), int(b), m == "cmimh", m)
                for b in s["tc_bits"] for m in ("cmimh", "cmimh_no_tc")]
    raise PipelineError(f"unknown study {name!r} (known: {', '.join(STUDIES)})")


def metrics_path(results: Path, run: Run) -> Path:
    return Path(results) / run.method / str(run.bits) / "metrics.json"


def study_metrics_files(results: str | Path, name: str, s: dict) -> list[str]:
    """The metrics.json files of a study (Snakemake inputs), without duplicates, in run order."""
    return list(dict.fromkeys(str(metrics_path(Path(results), r)) for r in study_runs(name, s)))


def load_study_metrics(results: Path, runs: list[Run], key: str) -> dict[Run, dict]:
    """``{run: metrics}``; a missing file or a file without ``key`` is one clear error."""
    from pipeline.eval.evaluate import read_metrics

    return {r: read_metrics(metrics_path(results, r), key) for r in runs}


# ----------------------------------------------------------------------------- tables
def pct(v: float | None) -> str:
    """A fraction as a percentage with two decimals, as the paper prints mAP; '–' when absent."""
    return "–" if v is None else f"{100 * v:.2f}"


def _size(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _columns_table(first: str, cols: list[str], rows: list[tuple[str, list[str]]]) -> str:
    out = [f"| {first} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(out)


def table_code_lengths(runs: list[Run], m: dict[Run, dict], key: str) -> str:
    """Table III layout: one row per (task, method), one column per code length."""
    by: dict[str, dict[int, dict]] = {}
    for r in runs:
        by.setdefault(r.group, {})[r.bits] = m[r]
    bits = list(dict.fromkeys(r.bits for r in runs))
    return metric_table(by, key, bits)


def table_sweep(runs: list[Run], m: dict[Run, dict], key: str, term: str) -> str:
    """Figures 1 / 3 as a table: one row per task, one column per weight."""
    cols = [f"{term} = {fmt_number(r.value)}" for r in runs]
    return _columns_table("Task", cols, [(label, [pct(m[r][key][t]) for r in runs]) for t, label in TASKS])


def table_train_size(runs: list[Run], m: dict[Run, dict], key: str) -> str:
    """Table IX layout: rows (L, task, method), one column per training-set size."""
    sizes = list(dict.fromkeys(r.value for r in runs))
    idx = {(r.bits, r.group, r.value): r for r in runs}
    lines = ["| L | Task | Method | " + " | ".join(_size(n) for n in sizes) + " |",
             "|---:|---|---|" + "---:|" * len(sizes)]
    for b in dict.fromkeys(r.bits for r in runs):
        for t, label in TASKS:
            for g in dict.fromkeys(r.group for r in runs):
                lines.append(f"| {b} | {label} | {g} | "
                             + " | ".join(pct(m[idx[(b, g, n)]][key][t]) for n in sizes) + " |")
    return "\n".join(lines)


def table_critic_input(runs: list[Run], m: dict[Run, dict], key: str) -> str:
    """Table I layout: one row per task; columns the critic on p, then on K binary samples."""
    cols = ["Bernoulli p" if r.value == "probs" else f"K = {r.value}" for r in runs]
    return _columns_table("Task", cols, [(label, [pct(m[r][key][t]) for r in runs]) for t, label in TASKS])


def table_ablation(runs: list[Run], m: dict[Run, dict], key: str) -> str:
    """Table IV: one row per variant (report.ablation_table's layout)."""
    return ablation_table({r.group: m[r] for r in runs}, key)


def _num(v: float | None, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table_tc(runs: list[Run], m: dict[Run, dict], key: str) -> str:
    """Table II layout: per code length, with (✓) and without (✗) the TC term; rows TC, Corr MSE, mAP."""
    cols = [f"{r.bits} {'✓' if r.value else '✗'}" for r in runs]
    d = {r: (m[r].get("diagnostics") or {}) for r in runs}
    rows = [("TC | Img", [_num(d[r].get("tc_image"), 3) for r in runs]),
            ("TC | Txt", [_num(d[r].get("tc_text"), 3) for r in runs]),
            ("Corr MSE | Img", [_num(d[r].get("corr_mse_image"), 4) for r in runs]),
            ("Corr MSE | Txt", [_num(d[r].get("corr_mse_text"), 4) for r in runs])]
    rows += [(f"mAP@{key.split('@')[1]} | {label}", [pct(m[r][key][t]) for r in runs]) for t, label in TASKS]
    out = ["| Quantity | | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(out)


def _varied(name: str, s: dict, runs: list[Run]) -> str:
    """The sentence under a table: what was varied, everything else as configured."""
    if name == "code_lengths":
        return ("Each cell trains the row's method at the column's code length; "
                "every other setting as configured.")
    if name in ("mi_sweep", "kl_sweep"):
        what = ("the inter-modal Jensen–Shannon MI term (w_mi)" if name == "mi_sweep"
                else "the symmetrised Bernoulli KL term (w_kl)")
        return (f"Each column trains CMIMH with the weight of {what} in eq. 14 set to the value shown; "
                "every other setting as configured. (The paper's extracted text lost its swept values; these are ours.)")
    if name == "train_size":
        return ("Each column trains on that many pairs drawn at random from the database with the seed "
                "(the -ntrain<n> variant), not the fixed training split; queries and database are unchanged.")
    if name == "critic_input":
        return ("The JS critic reads the Bernoulli probabilities p (the paper's choice) or K pairs of binary "
                "samples drawn with the straight-through estimator (I_JS averaged over the K pairs).")
    if name == "ablation":
        return "Each row trains CMIMH with one loss term switched off (its weight set to 0)."
    if name == "tc_study":
        return ("✓: CMIMH as configured; ✗: without the Total Correlation term (tc = 0). TC is the "
                "discriminator's estimate mean logit C(p) on the database codes; a model trained without the "
                "TC term has no discriminator, so its TC is not estimated (–; the paper estimates it with a "
                "separately trained classifier). Corr MSE = mean((C − I)²) of the database codes' bit correlations.")
    raise PipelineError(f"unknown study {name!r}")


TABLES: dict[str, Callable[..., str]] = {
    "code_lengths": table_code_lengths,
    "mi_sweep": lambda runs, m, key: table_sweep(runs, m, key, "mi"),
    "kl_sweep": lambda runs, m, key: table_sweep(runs, m, key, "kl"),
    "train_size": table_train_size,
    "critic_input": table_critic_input,
    "ablation": table_ablation,
    "tc_study": table_tc,
}


def study_markdown(name: str, s: dict, metrics: dict[Run, dict], runs: list[Run], k: int) -> str:
    """The Markdown section of one study: title, table (mAP@k in %), what was varied, the runs."""
    title, ref = TITLES[name]
    bits = sorted({r.bits for r in runs})
    bits_txt = f"{bits[0]} bits" if len(bits) == 1 else "bits " + ", ".join(map(str, bits))
    key = f"map@{k}"
    lines = [f"## {title} ({s['dataset']}, {bits_txt}, mAP@{k} in %; {ref})", "",
             TABLES[name](runs, metrics, key), "", _varied(name, s, runs), ""]
    if s.get("epochs") is not None and any(parse_method(r.method)["base"] == "cmimh" for r in runs):
        lines += [f"CMIMH runs of this study train for {int(s['epochs'])} epochs (studies.epochs), "
                  "not the configured cmimh epochs.", ""]
    runs_txt = ", ".join(f"`{m}`" for m in dict.fromkeys(r.method for r in runs))
    lines += [f"Runs (results/{s['dataset']}/<method>/<bits>/): {runs_txt}. Plot: studies/{name}.png.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def _figure(ncols: int, width: float = 3.6, height: float = 3.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _lines(ax, xlabels: list[str], series: dict[str, list[float | None]], xlabel: str, ylabel: str) -> None:
    """Lines over evenly spaced categorical x positions (sweeps include 0, so no log axis)."""
    x = np.arange(len(xlabels))
    for label, ys in series.items():
        ax.plot(x, [np.nan if v is None else v for v in ys], marker="o", label=label)
    ax.set_xticks(x, xlabels)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _bars(ax, groups: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """Grouped bars: one group per task, one bar per series."""
    x = np.arange(len(groups))
    w = 0.8 / max(len(series), 1)
    for i, (label, ys) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * w, ys, w, label=label)
    ax.set_xticks(x, groups)
    top = max((v for ys in series.values() for v in ys), default=1.0)
    rows = -(-len(series) // 3)  # legend rows, 3 entries a row
    ax.set(ylabel=ylabel, ylim=(0, (1.15 + 0.15 * rows) * top if top > 0 else 1.0))  # headroom for the legend
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=min(len(series), 3), loc="upper center")


def plot_study(name: str, runs: list[Run], m: dict[Run, dict], key: str, out_png: Path) -> None:
    """The study's plot: mAP (%) against the varied value per task, or grouped bars."""
    ylabel = f"{key} (%)"
    tasks = [t for t, _ in TASKS]
    labels = [label for _, label in TASKS]
    if name == "code_lengths":
        fig, axes = _figure(len(TASKS))
        groups = list(dict.fromkeys(r.group for r in runs))
        bits = list(dict.fromkeys(r.bits for r in runs))
        idx = {(r.group, r.bits): r for r in runs}
        for ax, t, label in zip(axes, tasks, labels):
            _lines(ax, [str(b) for b in bits], {g: [100 * m[idx[(g, b)]][key][t] for b in bits] for g in groups},
                   "bits", ylabel)
            ax.set_title(label)
    elif name in ("mi_sweep", "kl_sweep"):
        fig, axes = _figure(1, 5.0, 3.4)
        _lines(axes[0], [fmt_number(r.value) for r in runs],
               {label: [100 * m[r][key][t] for r in runs] for t, label in TASKS},
               "weight w_mi (JS-MI term)" if name == "mi_sweep" else "weight w_kl (symmetrised KL term)", ylabel)
        axes[0].set_title(TITLES[name][0])
    elif name == "train_size":
        bits = list(dict.fromkeys(r.bits for r in runs))
        sizes = list(dict.fromkeys(r.value for r in runs))
        groups = list(dict.fromkeys(r.group for r in runs))
        idx = {(r.bits, r.group, r.value): r for r in runs}
        fig, axes = _figure(len(bits), 4.2, 3.4)
        for ax, b in zip(axes, bits):
            _lines(ax, [_size(n) for n in sizes],
                   {f"{g} {label}": [100 * m[idx[(b, g, n)]][key][t] for n in sizes]
                    for g in groups for t, label in TASKS[:2]}, "training pairs", ylabel)
            ax.set_title(f"{b} bits")
    elif name in ("critic_input", "ablation"):
        fig, axes = _figure(1, 6.0, 3.4)
        def bar_label(r: Run) -> str:
            if name == "critic_input":
                return "Bernoulli p" if r.value == "probs" else f"K = {r.value}"
            return VARIANT_NAMES.get(r.group, r.group)

        series = {bar_label(r): [100 * m[r][key][t] for t in tasks] for r in runs}
        _bars(axes[0], labels, series, ylabel)
        axes[0].set_title(TITLES[name][0])
    elif name == "tc_study":
        bits = list(dict.fromkeys(r.bits for r in runs))
        idx = {(r.bits, r.value): r for r in runs}
        fig, axes = _figure(2, 4.2, 3.4)
        mk = {True: "with TC", False: "without TC"}
        _lines(axes[0], [str(b) for b in bits],
               {f"{label} {mk[w]}": [100 * m[idx[(b, w)]][key][t] for b in bits]
                for t, label in TASKS[:2] for w in (True, False)}, "bits", ylabel)
        _lines(axes[1], [str(b) for b in bits],
               {f"{mod} {mk[w]}": [(m[idx[(b, w)]].get("diagnostics") or {}).get(f"corr_mse_{mod}") for b in bits]
                for mod in ("image", "text") for w in (True, False)}, "bits", "Corr MSE")
        axes[0].set_title("mAP")
        axes[1].set_title("Corr MSE of database codes")
    else:
        raise PipelineError(f"unknown study {name!r}")
    _save(fig, out_png)


# ----------------------------------------------------------------------------- stage
def write_study(name: str, s: dict, results: Path, out_md: Path, out_png: Path | None = None,
                k: int | None = None) -> str:
    """Write study ``name``'s Markdown table (and plot) from ``results`` = results/{dataset}; return the text."""
    if name not in STUDIES:
        raise PipelineError(f"unknown study {name!r} (known: {', '.join(STUDIES)})")
    k = int(k if k is not None else s.get("eval_k", 1000))
    runs = study_runs(name, s)
    metrics = load_study_metrics(Path(results), runs, f"map@{k}")
    text = study_markdown(name, s, metrics, runs, k)
    if out_png is not None:
        plot_study(name, runs, metrics, f"map@{k}", Path(out_png))
    write_text(out_md, text)
    log.info("study %s: %s", name, out_md)
    return text
