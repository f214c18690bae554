"""The ``report`` stage (rule ``report``): ``results/{dataset}/report.md`` (the paper's Table III
layout per method, the other metrics, the diagnostics, the studies listed under
``studies.report``), its plots, and ``report.html`` (the same as one page)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def run(results: Path, dataset: str, bits: list[int], methods: list[str], out: Path,
                 k: int = 1000, include: list[Path] | None = None, html: Path | None = None) -> None:
    """Write ``report.md`` and its plots (``plots/`` beside it); ``include``: extra sections;
    ``html``: the same report as one self-contained HTML page (:func:`markdown_html`)."""
    from pipeline.io import check_output_path, code_version, write_error, write_text
    from pipeline.eval.tasks import PAIRED_KEY
    from pipeline.report.figures import plot_curves_by_bits, plot_paired_by_bits
    from pipeline.report.html import markdown_html
    from pipeline.report.tables import label_notes, load_metrics, metric_table, paired_table

    metrics = load_metrics(results, methods, bits, k)
    plots_dir = out.parent / "plots"
    check_output_path(plots_dir, folder=True)
    try:
        plots_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(plots_dir, e) from None
    key = f"map@{k}"
    labelled = any(key in mb for by in metrics.values() for mb in by.values())
    first = next(iter(metrics.values()))
    n_paired = next((mb["paired"]["n"] for by in metrics.values() for mb in by.values() if mb.get("paired")), None)
    relevance = ("Relevant = shares at least one label (the label-based tables); the paired table: each held-out "
                 "image's relevant item is its own caption and vice versa." if labelled else
                 "This collection has no labels, so evaluation is paired: each held-out image's only relevant item "
                 "is its own caption, and each caption's its own image (the Flickr30K / MS-COCO retrieval protocol).")
    lines = [f"# CMIMH report: {dataset}", "", f"Code version {code_version()}. {relevance} Values in %.", ""]
    if labelled:
        lines += [f"## mAP@{k} (the paper's Table III layout)", "", metric_table(metrics, key, bits), ""]
        lines += label_notes(metrics)
        chance = {b: first[b].get("chance", {}).get(key) for b in bits}
        if any(v for v in chance.values()):
            lines += ["Chance level (random codes, same queries and database): "
                      + ", ".join(f"{b} bits: " + ", ".join(f"{t} {100 * v:.2f}" for t, v in (chance[b] or {}).items())
                                  for b in bits), ""]
    paired = paired_table(metrics, bits)
    if paired:
        lines += [f"## Paired retrieval ({n_paired} held-out pairs: each query ranks the held-out items of the other "
                  "modality; R@K and mAP in %, MedR the median rank of the own pair)", "", paired, ""]
        if not labelled:
            lines += [f"### Paired mAP (mean reciprocal rank of the own pair) by code length", "",
                      metric_table(metrics, PAIRED_KEY, bits), ""]
        chance = {b: first[b].get("chance", {}).get(PAIRED_KEY) for b in bits}
        if any(v for v in chance.values()):
            lines += ["Chance level of the paired mAP (random codes, same held-out pairs): "
                      + ", ".join(f"{b} bits: " + ", ".join(f"{t} {100 * v:.2f}" for t, v in (chance[b] or {}).items())
                                  for b in bits), ""]
    for extra, title in (("map@all", "mAP over the whole database"), ("map@50", "mAP@50"),
                         ("pre@100", "Precision@100")):
        if labelled and any(extra in mb for by in metrics.values() for mb in by.values()):
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
        pngs = plot_curves_by_bits(by_bits, plots_dir, prefix=m) if labelled else []
        pngs.append(plot_paired_by_bits(by_bits, plots_dir / f"{m}_paired_recall.png"))
        for p in pngs:
            if p is not None:
                lines.append(f"- [{p.stem}](plots/{p.name})")
    lines.append("")
    text = "\n".join(lines)
    write_text(out, text)
    log.info("report: %s", out)
    if html is not None:
        write_text(html, markdown_html(text, out.parent, title=f"CMIMH report: {dataset}"))
        log.info("report: %s", html)
