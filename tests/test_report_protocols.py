"""The protocol studies (pipeline/report/protocols.py, pipeline/stages/protocol.py): their runs,
tables with the reported rows, notes from features.h5, and plots, from hand-made metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import REPO
from pipeline.report.protocols import PROTOCOLS, protocol_metrics_files
from pipeline.stages import protocol as stage
from pipeline.stages import resolve

TASKS = ("i2t", "t2i", "i2i", "t2t")


def metrics(v: float) -> dict:
    """A complete metrics.json whose every number derives from ``v`` (P@K = v, PR: v at recall 0..1)."""
    table = {t: v for t in TASKS}
    return {"map@1000": table, "map@all": {t: v / 2 for t in TASKS}, "map@50": {t: v / 4 for t in TASKS},
            "pre@100": {t: v / 5 for t in TASKS},
            "recall_one@k": {"k": [1, 5, 10], "i2t": [v / 10, v / 5, v / 3], "t2i": [v / 20, v / 6, v / 2]},
            "curves": {"p_at_k": {"k": [1, 100, 500, 1000], **{t: [v, v, v * 0.9, v * 0.8] for t in TASKS}},
                       "pr": {t: {"precision": [v, v * 0.5], "recall": [0.1, 1.0]} for t in TASKS}}}


@pytest.fixture()
def cfg():
    c = yaml.safe_load((REPO / "config.yaml").read_text())
    c["protocols"] = {name: {"methods": ["cmimh", "cvh", "fsh"]} for name in PROTOCOLS}
    return c


def write_runs(root: Path, s: dict, value=lambda m, b: 0.1 + 0.001 * b + (0.2 if m == "cmimh" else 0)) -> None:
    for f in protocol_metrics_files(root, s):
        parts = Path(f).parts
        m, b = parts[-3], int(parts[-2])
        Path(f).parent.mkdir(parents=True, exist_ok=True)
        Path(f).write_text(json.dumps(metrics(value(m.split("-")[0], b))))


def test_runs_are_every_method_at_each_bits_in_the_protocol_tree(cfg, tmp_path):
    s = resolve(cfg, "nuswide", "protocol", "handcrafted")
    files = protocol_metrics_files("results", s)
    assert files[:3] == [f"results/nuswide@handcrafted/cmimh/{b}/metrics.json" for b in (16, 32, 64)]
    assert len(files) == 9
    # studies.epochs shortens the CMIMH runs (their own folders), not the others
    cfg["studies"]["epochs"] = 5
    s = resolve(cfg, "demo", "protocol", "curves")
    assert protocol_metrics_files("r", s) == ["r/demo/cmimh-epochs5/32/metrics.json", "r/demo/cvh/32/metrics.json",
                                              "r/demo/fsh/32/metrics.json"]
    # null methods: every method we have
    cfg["protocols"]["ldr"]["methods"] = None
    assert len(resolve(cfg, "demo", "protocol", "ldr")["methods"]) == 9


def test_udcmh_table_has_our_runs_and_udcmh_reported_on_mirflickr(cfg, tmp_path):
    s = resolve(cfg, "mirflickr25k", "protocol", "udcmh")
    write_runs(tmp_path, s)
    text = stage.run("udcmh", s, tmp_path, tmp_path / "out.md", tmp_path / "out.png")
    assert "the paper's Table V" in text and "mAP@50" in text
    # cmimh: map@50 = (0.1 + 0.001 x bits + 0.2) / 4: 7.90, 8.30, 9.10 %
    assert "| Img→Txt | cmimh | 7.90 | 8.30 | 9.10 |" in text
    assert "| Img→Txt | UDCMH (reported, Table V) | 68.90 | 69.80 | 71.40 |" in text
    assert "| Txt→Img | CMIMH (the paper's, reported, Table V) | 82.40 | 83.80 | 86.20 |" in text
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Runs (results/mirflickr25k/<method>/<bits>/)" in text


def test_handcrafted_reports_cre_and_the_methods_we_did_not_run_and_prints_notes(cfg, tmp_path):
    s = resolve(cfg, "nuswide", "protocol", "handcrafted")
    write_runs(tmp_path, s)
    feats = tmp_path / "nuswide@handcrafted" / "features.h5"
    with h5py.File(feats, "w") as f:
        f.attrs["provenance"] = json.dumps({"counts": {"query": 2000, "database": 184577, "train": 20000},
                                            "protocol": {"notes": ["a note"], "sizes": {}}})
    text = stage.run("handcrafted", s, tmp_path, tmp_path / "h.md", tmp_path / "h.png", features=feats)
    assert "mAP@all:" in text and "Pre@100:" in text
    # we run CVH and FSH: not reported inline; PDH, CMFH, ACQ, CRE are
    inline = text.split("The paper's Table VIII")[0]
    for m in ("PDH", "CMFH", "ACQ", "CRE"):
        assert f"| {m} (reported, Table VIII) |" in inline
    assert "| FSH (reported" not in inline and "| CVH (reported" not in inline
    assert "| Img→Txt | CRE (reported, Table VIII) | – | – | – |" in inline  # Pre@100: the paper has none
    assert "| Txt→Img | PDH (reported, Table VIII) | – | 51.33 | 52.84 |" in inline  # Pre@100 at 16 bits: none
    assert "2,000 queries" in text and "20,000 training pairs" in text and "- a note" in text
    assert "NUS-WIDE's official 500-d bag of SIFT words" in text
    # elsewhere the study says which image features it used
    s = resolve(cfg, "demo", "protocol", "handcrafted")
    write_runs(tmp_path, s)
    text = stage.run("handcrafted", s, tmp_path, tmp_path / "d.md")
    assert "images as the data set's own image features (only NUS-WIDE has" in text


def test_ldr_recall_one_and_the_demo_without_reported_rows(cfg, tmp_path):
    cfg["protocols"]["ldr"]["bits"] = [64, 128]
    s = resolve(cfg, "demo", "protocol", "ldr")
    write_runs(tmp_path, s)
    text = stage.run("ldr", s, tmp_path, tmp_path / "l.md", tmp_path / "l.png")
    # cmimh: R@1 i2t = (0.1 + 0.001 x bits + 0.2) / 10, R@10 = that / 3: 64 bits 3.64, 12.13; 128 bits 4.28, 14.27
    assert "| Img→Txt | cmimh | 3.64 | 12.13 | 4.28 | 14.27 |" in text
    assert "(reported, Table VII) |" not in text.split("The paper's Table VII")[0]  # demo: no inline rows
    assert "| Img→Txt | LDR (1024-D) | 53.40 | 91.30 |" in text


def test_ldr_inline_rows_fill_the_128_bit_columns_on_mirflickr(cfg, tmp_path):
    cfg["protocols"]["ldr"]["bits"] = [64, 128]
    s = resolve(cfg, "mirflickr25k", "protocol", "ldr")
    write_runs(tmp_path, s)
    text = stage.run("ldr", s, tmp_path, tmp_path / "l.md", None)
    assert "| Txt→Img | LDR (1024-D) (reported, Table VII) | – | – | 40.50 | 88.70 |" in text


def test_curves_plot_every_method_and_table_of_precision(cfg, tmp_path):
    s = resolve(cfg, "demo", "protocol", "curves")
    write_runs(tmp_path, s)
    text = stage.run("curves", s, tmp_path, tmp_path / "c.md", tmp_path / "c.png")
    # cmimh at 32 bits: v = 0.332; P@500 = 0.9 v = 29.88 %, mAP@all = v / 2 = 16.60 %
    assert "| Img→Txt | cmimh | 33.20 | 29.88 | 26.56 | 16.60 |" in text
    from PIL import Image

    im = Image.open(tmp_path / "c.png")
    assert im.size[0] > 3 * im.size[1]  # four panels side by side: P@K and PR, each task
    # a different plot for different curves (the curves are drawn, not a blank canvas)
    write_runs(tmp_path, s, value=lambda m, b: 0.9 if m == "fsh" else 0.1)
    stage.run("curves", s, tmp_path, tmp_path / "c2.md", tmp_path / "c2.png")
    a = np.asarray(Image.open(tmp_path / "c.png").convert("L"), dtype=float)
    b = np.asarray(Image.open(tmp_path / "c2.png").convert("L"), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.5


def test_missing_run_is_one_line(cfg, tmp_path):
    from pipeline.errors import PipelineError

    s = resolve(cfg, "demo", "protocol", "curves")
    with pytest.raises(PipelineError, match="missing metrics file"):
        stage.run("curves", s, tmp_path, tmp_path / "c.md")
    with pytest.raises(PipelineError, match="unknown protocol"):
        stage.run("table9", s, tmp_path, tmp_path / "c.md")
