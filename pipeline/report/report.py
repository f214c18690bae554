"""The ``report`` stage: Table III layout (tasks x code lengths, per method) and curve plots.

Reads ``results/{dataset}/{method}/{bits}/metrics.json`` and writes ``report.md`` with the
plots in ``plots/`` beside it. Numbers are mAP in percent, as in the paper.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import atomic_output, check_output_path, code_version, write_error, write_text

log = logging.getLogger(__name__)

TASKS = [("i2t", "Img→Txt"), ("t2i", "Txt→Img"), ("i2i", "Img→Img"), ("t2t", "Txt→Txt")]


def load_metrics(results: Path, methods: list[str], bits: list[int], k: int = 1000) -> dict[str, dict[int, dict]]:
    """``{method: {bits: metrics}}``; a missing, damaged or other-``k`` file is one clear error
    (:func:`pipeline.eval.evaluate.read_metrics`)."""
    from pipeline.eval.evaluate import read_metrics

    out: dict[str, dict[int, dict]] = {}
    for m in methods:
        for b in bits:
            out.setdefault(m, {})[b] = read_metrics(results / m / str(b) / "metrics.json", f"map@{k}")
    return out


def metric_table(metrics: dict[str, dict[int, dict]], key: str, bits: list[int]) -> str:
    """A Markdown table: one row per (task, method), one column per code length, values in %."""
    head = "| Task | Method | " + " | ".join(f"{b} bits" for b in bits) + " |"
    sep = "|---|---|" + "---:|" * len(bits)
    rows = [head, sep]
    for task, label in TASKS:
        for m, by_bits in metrics.items():
            vals = []
            for b in bits:
                v = by_bits.get(b, {}).get(key, {}).get(task)
                vals.append("–" if v is None else f"{100 * v:.2f}")
            rows.append(f"| {label} | {m} | " + " | ".join(vals) + " |")
    return "\n".join(rows)


VARIANT_NAMES = {"cmimh": "CMIMH (all terms)", "cmimh_no_rec": "without reconstruction (rec = 0)",
                 "cmimh_no_mi": "without JS-MI (mi = 0)", "cmimh_no_kl": "without symmetric KL (kl = 0)",
                 "cmimh_no_tc": "without TC (tc = 0)", "cmimh_no_bal": "without balance (bal = 0)"}


def ablation_table(metrics: dict[str, dict], key: str) -> str:
    """Table IV layout: one row per variant, one column per task (values in %), plus Corr MSE."""
    rows = ["| Variant | " + " | ".join(label for _, label in TASKS) + " | Corr MSE (img/txt) |",
            "|---|" + "---:|" * (len(TASKS) + 1)]
    for m, mt in metrics.items():
        vals = [f"{100 * mt[key][t]:.2f}" for t, _ in TASKS]
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


def write_report(results: Path, dataset: str, bits: list[int], methods: list[str], out: Path,
                 k: int = 1000, include: list[Path] | None = None, html: Path | None = None) -> None:
    """Write ``report.md`` and its plots (``plots/`` beside it); ``include``: extra sections;
    ``html``: the same report as one self-contained HTML page (:func:`markdown_html`)."""
    from pipeline.eval.plots import plot_curves_by_bits

    metrics = load_metrics(results, methods, bits, k)
    plots_dir = out.parent / "plots"
    check_output_path(plots_dir, folder=True)
    try:
        plots_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(plots_dir, e) from None
    lines = [f"# CMIMH report: {dataset}", "",
             f"Code version {code_version()}. Relevant = shares at least one label. Values in %.", ""]
    key = f"map@{k}"
    lines += [f"## mAP@{k} (the paper's Table III layout)", "", metric_table(metrics, key, bits), ""]
    lines += label_notes(metrics)
    chance = {b: next(iter(metrics.values()))[b].get("chance", {}).get(key) for b in bits}
    if any(v for v in chance.values()):
        lines += ["Chance level (random codes, same queries and database): "
                  + ", ".join(f"{b} bits: " + ", ".join(f"{t} {100 * v:.2f}" for t, v in (chance[b] or {}).items())
                              for b in bits), ""]
    for extra, title in (("map@all", "mAP over the whole database"), ("map@50", "mAP@50"),
                         ("pre@100", "Precision@100")):
        if any(extra in mb for by in metrics.values() for mb in by.values()):
            lines += [f"## {title}", "", metric_table(metrics, extra, bits), ""]
    r1_rows = []
    for m, by_bits in metrics.items():
        for b in bits:
            r1 = by_bits[b].get("recall_one@k")
            if r1:
                cells = [f"{100 * r1[t][i]:.1f}" for t in ("i2t", "t2i") for i in range(len(r1["k"]))]
                r1_rows.append((r1["k"], f"| {m} | {b} | " + " | ".join(cells) + " |"))
    if r1_rows:
        ks = r1_rows[0][0]
        head = " | ".join(f"{t} R1@{k}" for t in ("I→T", "T→I") for k in ks)
        lines += ["## RecallOne@K (own pair within the top K; database items as queries; %)", "",
                  f"| Method | Bits | {head} |", "|---|---:|" + "---:|" * (2 * len(ks)),
                  *[row for _, row in r1_rows], ""]
    diag_rows = []
    for m, by_bits in metrics.items():
        for b in bits:
            d = by_bits[b].get("diagnostics")
            if d:
                diag_rows.append(f"| {m} | {b} | " + " | ".join(
                    "–" if d.get(c) is None else f"{d[c]:.4f}"
                    for c in ("corr_mse_image", "corr_mse_text", "tc_image", "tc_text")) + " |")
    if diag_rows:
        lines += ["## Code diagnostics (the paper's Table II)", "",
                  "| Method | Bits | Corr MSE (img) | Corr MSE (txt) | TC (img) | TC (txt) |",
                  "|---|---:|---:|---:|---:|---:|", *diag_rows, ""]
    for extra_md in include or []:
        if not Path(extra_md).is_file():
            raise PipelineError(f"missing report section: {extra_md}")
        try:
            lines += [Path(extra_md).read_bytes().decode("utf-8").rstrip(), ""]
        except UnicodeDecodeError as e:
            raise PipelineError(f"report section {extra_md}: not UTF-8 text (byte {e.object[e.start]:#04x} at "
                                f"offset {e.start})") from None
    lines += ["## Plots", ""]
    for m, by_bits in metrics.items():
        pngs = plot_curves_by_bits(by_bits, plots_dir, prefix=m)
        for p in pngs:
            lines.append(f"- [{p.stem}](plots/{p.name})")
    lines.append("")
    text = "\n".join(lines)
    write_text(out, text)
    log.info("report: %s", out)
    if html is not None:
        write_text(html, markdown_html(text, out.parent, title=f"CMIMH report: {dataset}"))
        log.info("report: %s", html)


HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .6rem}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}img{max-width:100%}code{background:#f3f3f3}"""


def markdown_html(text: str, base: Path, title: str) -> str:
    """``report.md`` as one self-contained HTML page: tables rendered, plots embedded.

    Snakemake's ``--report`` shows HTML, images and PDF files but offers anything else (Markdown,
    TSV) only as a download, so the result tables reach its report through this page. The
    Markdown is rendered by markdown-it-py (CommonMark with tables); links to the PNG plots beside
    the report become inline images (data URIs), so the page works wherever it is opened.
    """
    import base64
    import html as html_mod
    import re

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)

    def embed(m: re.Match) -> str:
        target = base / html_mod.unescape(m.group(1))
        if target.suffix.lower() != ".png" or not target.is_file():
            return m.group(0)
        data = base64.b64encode(target.read_bytes()).decode()
        return (f'<a href="{m.group(1)}">{m.group(2)}</a><br><img alt="{m.group(2)}" '
                f'src="data:image/png;base64,{data}">')

    body = re.sub(r'<a href="([^"]+)">([^<]*)</a>', embed, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html_mod.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n{body}</body></html>\n")


def plot_train_log(csv_path: Path, out_png: Path, x: str = "epoch",
                   columns: tuple[str, ...] | None = None) -> list[str]:
    """What a method optimises, per step of its fit, from its training log CSV (one panel a column).

    ``columns``: the quantities to plot (None: every numeric column but the counters and timings,
    CMIMH's loss terms); an empty tuple means nothing iterates (a closed-form fit such as CVH):
    the figure says so instead of plotting unrelated columns. ``x`` labels the first CSV column
    (epochs for the deep models, iterations for the solvers). Returns the columns plotted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise PipelineError(f"empty training log: {csv_path}")
    if columns is None:
        columns = tuple(c for c in rows[0] if c not in ("epoch", "step", "seconds") and rows[0][c] not in ("", None))
    terms = [c for c in columns if c in rows[0] and rows[0][c] not in ("", None)]
    steps = np.array([float(r["epoch"]) for r in rows])
    if not terms:  # a closed-form method (CVH): nothing iterates
        fig, ax = plt.subplots(figsize=(3, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "closed-form fit:\nno training iterations", ha="center", va="center")
        with atomic_output(out_png) as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)
        return []
    fig, axes = plt.subplots(1, len(terms), figsize=(3 * len(terms), 2.8), squeeze=False)
    for ax, t in zip(axes[0], terms):
        ax.plot(steps, [float(r[t]) if r[t] not in ("", "None") else np.nan for r in rows])
        ax.set_title(t)
        ax.set_xlabel(x)
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return terms
