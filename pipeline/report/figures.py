"""PR and P@K curve plots from ``metrics.json`` dicts (PNG, written atomically).

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display needed).
Missing curves are skipped rather than fatal: a plot must never fail a finished evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from pipeline.io import atomic_output

TASK_TITLES = {"i2t": "Image → Text", "t2i": "Text → Image", "i2i": "Image → Image", "t2t": "Text → Text"}

Series = Sequence[tuple[str, dict]]


def _series(metrics: Union[dict, Series]) -> list[tuple[str, dict]]:
    if isinstance(metrics, dict):
        return [("", metrics)]
    return [(str(label), m) for label, m in metrics]


def _figure(ncols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * ncols, 3.2))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def plot_curves(metrics: Union[dict, Series], out_png_pr: str | os.PathLike,
                out_png_pk: str | os.PathLike) -> list[Path]:
    """PR-by-radius curves (one panel per task) and P@K curves for one or more labelled results."""
    series = _series(metrics)
    tasks = list(TASK_TITLES)
    fig, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        for label, m in series:
            pr = m.get("curves", {}).get("pr", {}).get(task)
            if not pr:
                continue
            keep = [i for i, n in enumerate(pr.get("n_retrieving", [1] * len(pr["precision"]))) if n > 0]
            ax.plot([pr["recall"][i] for i in keep], [pr["precision"][i] for i in keep],
                    marker=".", markersize=3, label=label or None)
        ax.set(title=TASK_TITLES[task], xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    if any(label for label, _ in series):
        axes[-1].legend(fontsize=8)
    pr_path = _save(fig, out_png_pr)

    fig, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        for label, m in series:
            pk = m.get("curves", {}).get("p_at_k", {})
            if task not in pk or "k" not in pk:
                continue
            ax.plot(pk["k"], pk[task], label=label or None)
        ax.set(title=TASK_TITLES[task], xlabel="K (retrieved items)", ylabel="precision@K", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    if any(label for label, _ in series):
        axes[-1].legend(fontsize=8)
    return [pr_path, _save(fig, out_png_pk)]


def plot_curves_by_bits(results: dict[int, dict], out_dir: str | os.PathLike, prefix: str = "") -> list[Path]:
    """One PR and one P@K figure comparing code lengths: ``{prefix_}pr.png``, ``{prefix_}p_at_k.png``."""
    out_dir = Path(out_dir)
    stem = f"{prefix}_" if prefix else ""
    series = [(f"{b} bits", results[b]) for b in sorted(results, key=int)]
    return plot_curves(series, out_dir / f"{stem}pr.png", out_dir / f"{stem}p_at_k.png")
