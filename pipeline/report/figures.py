"""Every plot of the pipeline, through one figure helper: retrieval curves, study and tune plots,
training histories (PNG, written atomically).

:func:`figure` and :func:`save` are the helper: matplotlib's object API on the Agg canvas (no
pyplot global state, no display needed); :func:`lines` and :func:`bars` draw the two kinds of
study plot. Missing curves are skipped rather than fatal: a plot must never fail a finished run.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from pipeline.errors import PipelineError
from pipeline.eval.tasks import TASKS
from pipeline.io import atomic_output

Series = Sequence[tuple[str, dict]]


def _series(metrics: Union[dict, Series]) -> list[tuple[str, dict]]:
    if isinstance(metrics, dict):
        return [("", metrics)]
    return [(str(label), m) for label, m in metrics]


def figure(ncols: int = 1, width: float = 3.4, height: float = 3.2):
    """A figure of ``ncols`` panels side by side (each ``width`` x ``height`` inches) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def save(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Lay out and write the figure as PNG, atomically."""
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def lines(ax, xlabels: list[str], series: dict[str, list[float | None]], xlabel: str, ylabel: str) -> None:
    """Lines over evenly spaced categorical x positions (sweeps include 0, so no log axis)."""
    x = np.arange(len(xlabels))
    for label, ys in series.items():
        ax.plot(x, [np.nan if v is None else v for v in ys], marker="o", label=label)
    ax.set_xticks(x, xlabels)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def bars(ax, groups: list[str], series: dict[str, list[float]], ylabel: str,
         errors: dict[str, list[float]] | None = None) -> None:
    """Grouped bars: one group per task, one bar per series (with error bars when given)."""
    x = np.arange(len(groups))
    w = 0.8 / max(len(series), 1)
    for i, (label, ys) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * w, ys, w, label=label,
               yerr=None if errors is None else errors[label], capsize=2)
    ax.set_xticks(x, groups)
    top = max((v for ys in series.values() for v in ys), default=1.0)
    rows = -(-len(series) // 3)  # legend rows, 3 entries a row
    ax.set(ylabel=ylabel, ylim=(0, (1.15 + 0.15 * rows) * top if top > 0 else 1.0))  # headroom for the legend
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=min(len(series), 3), loc="upper center")


def plot_curves(metrics: Union[dict, Series], out_png_pr: str | os.PathLike,
                out_png_pk: str | os.PathLike) -> list[Path]:
    """PR-by-radius curves (one panel per task) and P@K curves for one or more labelled results."""
    series = _series(metrics)
    fig, axes = figure(len(TASKS))
    for ax, t in zip(axes, TASKS, strict=True):
        task = t.name
        for label, m in series:
            pr = m.get("curves", {}).get("pr", {}).get(task)
            if not pr:
                continue
            keep = [i for i, n in enumerate(pr.get("n_retrieving", [1] * len(pr["precision"]))) if n > 0]
            ax.plot([pr["recall"][i] for i in keep], [pr["precision"][i] for i in keep],
                    marker=".", markersize=3, label=label or None)
        ax.set(title=t.title, xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    if any(label for label, _ in series):
        axes[-1].legend(fontsize=8)
    pr_path = save(fig, out_png_pr)

    fig, axes = figure(len(TASKS))
    for ax, t in zip(axes, TASKS, strict=True):
        task = t.name
        for label, m in series:
            pk = m.get("curves", {}).get("p_at_k", {})
            if task not in pk or "k" not in pk:
                continue
            ax.plot(pk["k"], pk[task], label=label or None)
        ax.set(title=t.title, xlabel="K (retrieved items)", ylabel="precision@K", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    if any(label for label, _ in series):
        axes[-1].legend(fontsize=8)
    return [pr_path, save(fig, out_png_pk)]


def plot_curves_by_bits(results: dict[int, dict], out_dir: str | os.PathLike, prefix: str = "") -> list[Path]:
    """One PR and one P@K figure comparing code lengths: ``{prefix_}pr.png``, ``{prefix_}p_at_k.png``."""
    out_dir = Path(out_dir)
    stem = f"{prefix}_" if prefix else ""
    series = [(f"{b} bits", results[b]) for b in sorted(results, key=int)]
    return plot_curves(series, out_dir / f"{stem}pr.png", out_dir / f"{stem}p_at_k.png")


def plot_train_log(csv_path: Path, out_png: Path, x: str = "epoch",
                   columns: tuple[str, ...] | None = None) -> list[str]:
    """What a method optimises, per step of its fit, from its training log CSV (one panel a column).

    ``columns``: the quantities to plot (None: every numeric column but the counters and timings,
    CMIMH's loss terms); an empty tuple means nothing iterates (a closed-form fit such as CVH):
    the figure says so instead of plotting unrelated columns. ``x`` labels the first CSV column
    (epochs for the deep models, iterations for the solvers). Returns the columns plotted.
    """
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise PipelineError(f"empty training log: {csv_path}")
    if columns is None:
        columns = tuple(c for c in rows[0] if c not in ("epoch", "step", "seconds") and rows[0][c] not in ("", None))
    terms = [c for c in columns if c in rows[0] and rows[0][c] not in ("", None)]
    steps = np.array([float(r["epoch"]) for r in rows])
    if not terms:  # a closed-form method (CVH): nothing iterates
        fig, axes = figure(1, 3.0, 1.5)
        axes[0].axis("off")
        axes[0].text(0.5, 0.5, "closed-form fit:\nno training iterations", ha="center", va="center")
        save(fig, out_png, dpi=90)
        return []
    fig, axes = figure(len(terms), 3.0, 2.8)
    for ax, t in zip(axes, terms):
        ax.plot(steps, [float(r[t]) if r[t] not in ("", "None") else np.nan for r in rows])
        ax.set_title(t)
        ax.set_xlabel(x)
    save(fig, out_png, dpi=90)
    return terms


def plot_paired_by_bits(results: dict[int, dict], out_png: str | os.PathLike) -> Path | None:
    """Recall@K of the own pair (paired evaluation) per code length, I→T and T→I; None without data."""
    series = [(f"{b} bits", results[b].get("paired")) for b in sorted(results, key=int)]
    series = [(label, p) for label, p in series if p]
    if not series:
        return None
    fig, axes = figure(2)
    for ax, (task, title) in zip(axes, (("i2t", "Image → its text"), ("t2i", "Text → its image"))):
        for label, p in series:
            c = p[task]["curve"]
            ax.plot(c["k"], c["recall"], marker=".", label=label)
        ax.set(title=title, xlabel="K", ylabel="recall@K (own pair)", xscale="log", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    return save(fig, out_png)
