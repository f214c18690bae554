"""The report's Markdown tables: the paper's Table III layout, the ablation table, notes on labels.

Numbers are fractions in metrics.json and percentages (two decimals) in tables, as the paper prints mAP.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.eval.tasks import TASKS, tasks_for


def pct(v: float | None) -> str:
    """A fraction as a percentage with two decimals; '–' when absent."""
    return "–" if v is None else f"{100 * v:.2f}"


def load_metrics(results: Path, methods: list[str], bits: list[int], k: int = 1000) -> dict[str, dict[int, dict]]:
    """``{method: {bits: metrics}}``; a missing, damaged or other-``k`` file is one clear error
    (:func:`pipeline.eval.metrics_json.read_metrics`)."""
    from pipeline.eval.metrics_json import read_metrics

    out: dict[str, dict[int, dict]] = {}
    for m in methods:
        for b in bits:
            out.setdefault(m, {})[b] = read_metrics(results / m / str(b) / "metrics.json", f"map@{k}")
    return out


def metric_table(metrics: dict[str, dict[int, dict]], key: str, bits: list[int]) -> str:
    """A Markdown table: one row per (task, method), one column per code length, values in %
    (the tasks ``key`` has: four label-based ones, or the two paired ones)."""
    head = "| Task | Method | " + " | ".join(f"{b} bits" for b in bits) + " |"
    sep = "|---|---|" + "---:|" * len(bits)
    rows = [head, sep]
    for t in tasks_for(key):
        for m, by_bits in metrics.items():
            vals = []
            for b in bits:
                v = by_bits.get(b, {}).get(key, {}).get(t.name)
                vals.append("–" if v is None else f"{100 * v:.2f}")
            rows.append(f"| {t.label} | {m} | " + " | ".join(vals) + " |")
    return "\n".join(rows)


VARIANT_NAMES = {"cmimh": "CMIMH (all terms)", "cmimh_no_rec": "without reconstruction (rec = 0)",
                 "cmimh_no_mi": "without JS-MI (mi = 0)", "cmimh_no_kl": "without symmetric KL (kl = 0)",
                 "cmimh_no_tc": "without TC (tc = 0)", "cmimh_no_bal": "without balance (bal = 0)"}


def ablation_table(metrics: dict[str, dict], key: str) -> str:
    """Table IV layout: one row per variant, one column per task (values in %), plus Corr MSE."""
    tasks = tasks_for(key)
    rows = ["| Variant | " + " | ".join(t.label for t in tasks) + " | Corr MSE (img/txt) |",
            "|---|" + "---:|" * (len(tasks) + 1)]
    for m, mt in metrics.items():
        vals = [f"{100 * mt[key][t.name]:.2f}" for t in tasks]
        d = mt.get("diagnostics") or {}
        corr = ("–" if d.get("corr_mse_image") is None
                else f"{d['corr_mse_image']:.4f} / {d['corr_mse_text']:.4f}")
        rows.append(f"| {VARIANT_NAMES.get(m, m)} | " + " | ".join(vals) + f" | {corr} |")
    return "\n".join(rows)


def label_notes(metrics: dict[str, dict[int, dict]]) -> list[str]:
    """Warnings under the tables when labels cannot support the numbers (evaluate's ``labels``)."""
    lab = next((mb["labels"] for by in metrics.values() for mb in by.values() if mb.get("labels")), None)
    if not lab:
        return []
    nq, none, unl = lab["n_query"], lab["query_without_relevant"], lab["query_unlabelled"]
    if none == nq:
        return [f"**Warning: none of the {nq} queries has a relevant database item** ({unl} carry no label, "
                f"{lab['db_unlabelled']} of {lab['n_db']} database items carry none): every label-based number "
                "above is 0 and says nothing about the methods. Relevance needs labels.", ""]
    out = []
    if none:
        out.append(f"**Warning:** {none} of {nq} queries ({100 * none / nq:.1f}%) have no relevant database item "
                   f"({unl} carry no label): their AP is 0 under every method, which lowers every mAP alike.")
    if lab["db_unlabelled"]:
        out.append(f"**Warning:** {lab['db_unlabelled']} of {lab['n_db']} database items carry no label: they are "
                   "never relevant to any query.")
    return out + [""] if out else []


PAIRED_COLUMNS = (("r@1", "R@1"), ("r@5", "R@5"), ("r@10", "R@10"), ("median_rank", "MedR"), ("map", "mAP"))


def paired_table(metrics: dict[str, dict[int, dict]], bits: list[int]) -> str | None:
    """The paired metrics (R@1/5/10 and mAP in %, median rank), one row per (method, bits), I→T
    then T→I columns, as the Flickr30K / MS-COCO retrieval tables; None when no run has them."""
    rows = []
    for m, by_bits in metrics.items():
        for b in bits:
            p = by_bits.get(b, {}).get("paired")
            if not p:
                continue
            cells = []
            for t in ("i2t", "t2i"):
                for key, _ in PAIRED_COLUMNS:
                    v = p[t][key]
                    cells.append(f"{v:.1f}" if key == "median_rank" else f"{100 * v:.2f}")
            rows.append(f"| {m} | {b} | " + " | ".join(cells) + " |")
    if not rows:
        return None
    head = " | ".join(f"{d} {label}" for d in ("I→T", "T→I") for _, label in PAIRED_COLUMNS)
    return "\n".join([f"| Method | Bits | {head} |", "|---|---:|" + "---:|" * (2 * len(PAIRED_COLUMNS)), *rows])
