"""The paper's protocol studies (section IV-C): each reruns CMIMH and every baseline under another
paper's features, split and metric, and prints the paper's numbers for the methods we cannot run
beside ours, marked "reported" (:mod:`pipeline.report.reported`).

==============  ============  ===========================================================================
target          the paper     protocol (preset ``protocols.NAME``, :data:`pipeline.config.PROTOCOL_DEFAULTS`)
==============  ============  ===========================================================================
udcmh_protocol  Table V       the data set's own features and split; mAP@50; UDCMH reported
mgah_protocol   Table VI      VGG-19 FC7, 1,000-d bag of words; 5% (NUS-WIDE 1%) queries, the rest database
                              and training set; mAP over the whole database; MGAH, UKD-SS reported
ldr_protocol    Table VII     VGG-19 FC7; 1,000 queries, 1,000 validation pairs, the rest database and
                              training set; RecallOne@1/@10; LDR reported
handcrafted_    Table VIII    NUS-WIDE's official 500-d bag of SIFT words and 1,000-d tags; 2,000 queries,
protocol                      20,000 training pairs; mAP over the database and Pre@100; CRE (and FSH
                              where not run) reported
curves          Figures 4, 5  P@K and precision-recall curves at 32 bits, every method, one panel a task
==============  ============  ===========================================================================

A preset that changes the features or the split runs in its own results tree,
``results/{dataset}@{protocol}/{method}/{bits}/`` (data set ``NAME@PROTOCOL``,
:func:`pipeline.config.dataset_view`), so it never overwrites the data set's own runs; udcmh and
curves change neither and read the data set's own runs. Sizes that do not fit a small data set
(the demo) shrink at assembly (:func:`pipeline.data.splits.plan_split`); the notes are in
``features.h5``'s provenance and the study's Markdown.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.eval.tasks import CROSS_MODAL, PAIRED_KEY, headline_key
from pipeline.methods import REGISTRY, parse_method
from pipeline.report import figures
from pipeline.report.reported import REPORTED, paper_row, reported_rows
from pipeline.report.studies import Run, metrics_path, with_epochs

log = logging.getLogger(__name__)

#: The paper's data sets each reported table has, as the data-set sources that match them.
PAPER_DATASETS = {"mirflickr25k": "MIRFlickr-25K", "nuswide": "NUS-WIDE"}
RECALL_KS = (1, 10)


@dataclass(frozen=True)
class Protocol:
    """One protocol study: its preset name, target, the paper's table and its metrics."""

    name: str
    target: str
    table: str | None
    title: str
    metrics: tuple[str, ...]  # metrics.json keys (``recall_one`` for RecallOne@K)
    reference: str

    # ------------------------------------------------------------------ runs
    def runs(self, s: dict) -> list[Run]:
        """Every method of the preset at each of its code lengths (CMIMH with ``studies.epochs``)."""
        return [Run(with_epochs(m, s["epochs"]), int(b), int(b), m) for m in s["methods"] for b in s["bits"]]

    # ------------------------------------------------------------------ table
    def _value(self, m: dict, key: str, task: str, k: int | None = None) -> float | None:
        if key == "recall_one":
            r = m.get("recall_one@k") or {}
            if k not in (r.get("k") or []):
                return None
            return float(r[task][r["k"].index(k)])
        table = m.get(key)
        return None if table is None or table.get(task) is None else float(table[task])

    def _cells(self, keys: list[tuple[str, int | None]]) -> list[str]:
        return [f"{'R@' + str(k) if k else key.replace('map', 'mAP').replace('pre', 'Pre')}" for key, k in keys]

    def markdown(self, s: dict, metrics: dict[Run, dict], runs: list[Run], key_used: dict[str, str],
                 notes: list[str]) -> str:
        """Title, one table per metric (our runs, then the reported rows of this data set), the
        paper's table as printed, the notes and the runs."""
        ds, src = s["dataset"], s.get("source")
        bits = list(dict.fromkeys(r.bits for r in runs))
        ref = f"the paper's Table {self.table}" if self.table else self.reference
        out = [f"## {self.title} ({ds}, bits {', '.join(map(str, bits))}, in %; {ref})", ""]
        for metric in self.metrics:
            used = key_used.get(metric, metric)
            label = "RecallOne@K" if metric == "recall_one" else used.replace("map", "mAP").replace("pre", "Pre")
            cols = [(b, k) for b in bits for k in RECALL_KS] if metric == "recall_one" else [(b, None) for b in bits]
            head = [f"{b} bits R@{k}" if k else f"{b} bits" for b, k in cols]
            out += [f"{label}:", "", "| Task | Method | " + " | ".join(head) + " |",
                    "|---|---|" + "---:|" * len(cols)]
            idx = {(r.group, r.bits): r for r in runs}
            for t in CROSS_MODAL:
                for g in dict.fromkeys(r.group for r in runs):
                    cells = []
                    for b, k in cols:
                        v = self._value(metrics[idx[(g, b)]], used, t.name, k)
                        cells.append("–" if v is None else f"{100 * v:.2f}")
                    out.append(f"| {t.label} | {g} | " + " | ".join(cells) + " |")
                if self.table and src in PAPER_DATASETS and metric in REPORTED[self.table] and used == metric:
                    for meth, vals in reported_rows(self.table, metric, t.name, src, s["methods_base"]).items():
                        out.append(f"| {t.label} | {meth} (reported, Table {self.table}) | "
                                   + " | ".join(self._reported_cell(vals, b, k) for b, k in cols) + " |")
                    own = paper_row(self.table, metric, t.name, src)
                    if own:
                        out.append(f"| {t.label} | CMIMH (the paper's, reported, Table {self.table}) | "
                                   + " | ".join(self._reported_cell(own, b, k) for b, k in cols) + " |")
            out.append("")
        out += self.caption(s, key_used)
        if self.table:
            out += self.paper_table()
        if notes:
            out += ["Protocol notes (features.h5 provenance):", ""] + [f"- {n}" for n in notes] + [""]
        if s.get("epochs") is not None:
            out += [f"CMIMH runs of this study train for {int(s['epochs'])} epochs (studies.epochs).", ""]
        runs_txt = ", ".join(f"`{m}`" for m in dict.fromkeys(r.method for r in runs))
        out += [f"Runs (results/{s['tree']}/<method>/<bits>/): {runs_txt}. Plot: studies/{self.target}.png.", ""]
        return "\n".join(out)

    def _reported_cell(self, vals: dict, b: int, k: int | None) -> str:
        v = vals.get(k) if k is not None else vals.get(b)
        if k is not None and b != 128:  # LDR / the paper's CMIMH row: one column set (128 bits / real-valued)
            return "–"
        return "–" if v is None else f"{v:.2f}"

    def caption(self, s: dict, key_used: dict[str, str]) -> list[str]:
        text = [s["description"]]
        if any(v == PAIRED_KEY for v in key_used.values()):
            text.append("The data set has no labels: the paired mAP (own pair) stands in for the label-based metric.")
        if "recall_one" in self.metrics:
            text.append("RecallOne@K: the fraction of queries whose own pair is among the first K retrieved; our "
                        "evaluation queries with database items (up to 5,000) and looks for the same row in the other "
                        "modality (pipeline/eval/metrics.py paired_recall_one). LDR reports 1,024-d real-valued "
                        "features, the paper's CMIMH 128-bit codes: their rows fill the 128-bit columns.")
        return [" ".join(text), ""]

    def paper_table(self) -> list[str]:
        """The paper's table as printed (every row, its data sets), marked reported."""
        out = [f"The paper's Table {self.table} (reported):", ""]
        for metric, tasks in REPORTED[self.table].items():
            dsets = list(dict.fromkeys(d for rows in tasks.values() for vals in rows.values() for d in vals))
            cols = [(d, c) for d in dsets for c in
                    dict.fromkeys(c for rows in tasks.values() for vals in rows.values() for c in vals.get(d, {}))]
            what = "R@" if metric == "recall_one" else ""
            head = [f"{PAPER_DATASETS[d]} {what}{c}" for d, c in cols]
            out += [f"{metric.replace('map', 'mAP').replace('pre', 'Pre').replace('recall_one', 'RecallOne@K')}:", "",
                    "| Task | Method | " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(cols)]
            for task, rows in tasks.items():
                label = next(t.label for t in CROSS_MODAL if t.name == task)
                for meth, vals in rows.items():
                    cells = [vals.get(d, {}).get(c) for d, c in cols]
                    out.append(f"| {label} | {meth} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in cells)
                               + " |")
            out.append("")
        return out

    # ------------------------------------------------------------------ plot
    def plot(self, s: dict, runs: list[Run], metrics: dict[Run, dict], key_used: dict[str, str], out_png: Path) -> None:
        """The first metric over the code lengths, one line a method, one panel a task; the reported
        rows of this data set dashed."""
        metric = self.metrics[0]
        used = key_used.get(metric, metric)
        k = RECALL_KS[0] if metric == "recall_one" else None
        bits = list(dict.fromkeys(r.bits for r in runs))
        idx = {(r.group, r.bits): r for r in runs}
        fig, axes = figures.figure(len(CROSS_MODAL), 4.2, 3.4)
        x = np.arange(len(bits))
        for ax, t in zip(axes, CROSS_MODAL):
            for g in dict.fromkeys(r.group for r in runs):
                ys = [self._value(metrics[idx[(g, b)]], used, t.name, k) for b in bits]
                ax.plot(x, [np.nan if v is None else 100 * v for v in ys], marker="o", label=g)
            src = s.get("source")
            if self.table and src in PAPER_DATASETS and used == metric and metric != "recall_one":
                for meth, vals in reported_rows(self.table, metric, t.name, src, s["methods_base"]).items():
                    ax.plot(x, [np.nan if vals.get(b) is None else vals[b] for b in bits], ls="--", marker="x",
                            label=f"{meth} (reported)")
            ax.set_xticks(x, [str(b) for b in bits])
            ylabel = f"RecallOne@{k} (%)" if k else f"{used} (%)"
            ax.set(xlabel="bits", ylabel=ylabel, title=t.title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        fig.suptitle(f"{self.title} ({s['dataset']})", fontsize=10)
        figures.save(fig, out_png)


class Curves(Protocol):
    """Figures 4 and 5: P@K and precision-recall curves of every method at one code length."""

    def markdown(self, s, metrics, runs, key_used, notes):
        b = runs[0].bits
        ds = s["dataset"]
        ks = (100, 500, 1000)
        out = [f"## {self.title} ({ds}, {b} bits; {self.reference})", "",
               "| Task | Method | " + " | ".join(f"P@{k}" for k in ks) + " | mAP (whole database) |",
               "|---|---|" + "---:|" * (len(ks) + 1)]
        for t in CROSS_MODAL:
            for r in runs:
                pk = (metrics[r].get("curves") or {}).get("p_at_k") or {}
                grid = pk.get("k") or []
                cells = [f"{100 * pk[t.name][grid.index(k)]:.2f}" if k in grid and t.name in pk else "–" for k in ks]
                mall = (metrics[r].get("map@all") or {}).get(t.name)
                out.append(f"| {t.label} | {r.group} | " + " | ".join(cells) + f" | {'–' if mall is None else f'{100 * mall:.2f}'} |")
        out += ["", s["description"], "", f"The curves: studies/{self.target}.png (P@K, then precision-recall; "
                "one panel a task, every method on it). The paper's figures print no numbers, so nothing is reported.", ""]
        runs_txt = ", ".join(f"`{m}`" for m in dict.fromkeys(r.method for r in runs))
        out += [f"Runs (results/{s['tree']}/<method>/<bits>/): {runs_txt}.", ""]
        return "\n".join(out)

    def plot(self, s, runs, metrics, key_used, out_png):
        fig, axes = figures.figure(4, 3.6, 3.2)
        for j, t in enumerate(CROSS_MODAL):
            ax_pk, ax_pr = axes[j], axes[2 + j]
            for r in runs:
                c = metrics[r].get("curves") or {}
                pk, pr = c.get("p_at_k") or {}, (c.get("pr") or {}).get(t.name)
                if t.name in pk:
                    ax_pk.plot(pk["k"], [100 * v for v in pk[t.name]], label=r.group)
                if pr:
                    ax_pr.plot(pr["recall"], [100 * v for v in pr["precision"]], label=r.group)
            ax_pk.set(xlabel="K (retrieved)", ylabel="precision@K (%)", title=f"P@K, {t.title}")
            ax_pr.set(xlabel="recall", ylabel="precision (%)", title=f"PR, {t.title}")
            for ax in (ax_pk, ax_pr):
                ax.grid(alpha=0.3)
                ax.legend(fontsize=6)
        fig.suptitle(f"{self.title} ({s['dataset']}, {runs[0].bits} bits)", fontsize=10)
        figures.save(fig, out_png)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("udcmh", "udcmh_protocol", "V", "Comparison with UDCMH", ("map@50",), "UDCMH's protocol"),
    Protocol("mgah", "mgah_protocol", "VI", "Comparison with MGAH and UKD", ("map@all",), "MGAH's and UKD's protocol"),
    Protocol("ldr", "ldr_protocol", "VII", "Comparison with LDR", ("recall_one",), "LDR's protocol"),
    Protocol("handcrafted", "handcrafted_protocol", "VIII", "Hand-crafted features", ("map@all", "pre@100"),
             "CRE's and FSH's protocol"),
    Curves("curves", "curves", None, "P@K and precision-recall curves", ("map@all",), "the paper's Figures 4 and 5"),
)}
DESCRIPTIONS = {
    "udcmh": "UDCMH's protocol (the paper's Table V): the data set's own features and split; mAP of the top 50 "
             "retrieved (mAP@50).",
    "mgah": "MGAH's and UKD's protocol (Table VI): VGG-19 FC7 image features, a 1,000-word bag of words for the "
            "texts; {q} queries, the rest both the training set and the retrieval database; mAP over the whole "
            "database.",
    "ldr": "LDR's protocol (Table VII): VGG-19 FC7 image features; {q} queries, {v} validation pairs (held out of "
           "the database and the training set), the rest both database and training set.",
    "handcrafted": "CRE's and FSH's protocol (Table VIII): images as NUS-WIDE's official 500-d bag of SIFT words, "
                   "texts as 1,000-d vectors; {q} queries, the rest the database, {t} training pairs drawn from it; "
                   "mAP over the whole database and precision of the top 100 (Pre@100).",
    "curves": "The paper's Figures 4 and 5: precision of the top K and the precision-recall curve, over the whole "
              "database, every method at one code length on the data set's own features and split.",
}


def protocol_settings(config: dict, dataset: str, name: str, view: dict) -> dict:
    """What protocol study ``name`` on ``dataset`` needs: the tree its runs are in (``dataset@name``
    or ``dataset``), its methods (null: every method of REGISTRY) and code lengths, ``studies.epochs``,
    the data set's source (which reported numbers apply)."""
    from pipeline.config import protocol_dataset, protocol_preset

    if name not in PROTOCOLS:
        raise PipelineError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    source = view.get("source")
    p = protocol_preset(config, name, source)
    methods = list(p["methods"]) if p["methods"] else list(REGISTRY)
    for i, m in enumerate(methods):
        try:
            parse_method(m)
        except PipelineError as e:
            raise PipelineError(f"config: protocols.{name}.methods[{i}]: {e}") from None
    epochs = (view.get("studies") or {}).get("epochs")
    return {"dataset": dataset, "protocol": name, "tree": protocol_dataset(config, dataset, name),
            "source": source, "bits": p["bits"], "methods": methods,
            "methods_base": [parse_method(m).base for m in methods], "split": p["split"],
            "epochs": None if epochs is None else int(epochs), "eval_k": int(view.get("eval_k", 1000))}


def protocol_metrics_files(results_root: str | Path, s: dict) -> list[str]:
    """The metrics.json of every run of a protocol study (Snakemake inputs), in run order."""
    p = PROTOCOLS[s["protocol"]]
    return list(dict.fromkeys(str(metrics_path(Path(results_root) / s["tree"], r)) for r in p.runs(s)))


def features_notes(features_h5: Path | None) -> tuple[list[str], dict]:
    """The protocol record of a features file's provenance: its notes and the split sizes used."""
    if features_h5 is None or not Path(features_h5).is_file():
        return [], {}
    import h5py

    with h5py.File(features_h5, "r") as f:
        prov = json.loads(f.attrs.get("provenance", "{}"))
    proto = prov.get("protocol") or {}
    counts = prov.get("counts") or {}
    return list(proto.get("notes") or []), {**counts, **(proto.get("sizes") or {})}
