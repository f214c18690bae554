import json

import pytest

from pipeline.errors import PipelineError
from pipeline.report.figures import plot_train_log
from pipeline.report.tables import metric_table
from pipeline.stages.report import run as write_report


def _metrics(v):
    return {"map@1000": {"i2t": v, "t2i": v + 0.01, "i2i": v + 0.02, "t2t": v + 0.03},
            "curves": {"p_at_k": {"k": [1, 5], "i2t": [1.0, 0.8], "t2i": [1.0, 0.8], "i2i": [1.0, 0.8],
                                  "t2t": [1.0, 0.8]},
                       "pr": {t: {"radius": [0, 1], "precision": [1.0, 0.5], "recall": [0.1, 0.4]}
                              for t in ("i2t", "t2i", "i2i", "t2t")}},
            "diagnostics": {"corr_mse_image": 0.01, "corr_mse_text": 0.02, "tc_image": 0.5, "tc_text": None}}


def test_table_iii_layout_in_percent():
    t = metric_table({"cmimh": {16: _metrics(0.5), 32: _metrics(0.6)}}, "map@1000", [16, 32])
    lines = t.splitlines()
    assert lines[0] == "| Task | Method | 16 bits | 32 bits |"
    assert lines[2] == "| Img→Txt | cmimh | 50.00 | 60.00 |"
    assert lines[5] == "| Txt→Txt | cmimh | 53.00 | 63.00 |"


def test_write_report_with_plots_and_diagnostics(tmp_path):
    for b, v in ((16, 0.5), (32, 0.6)):
        p = tmp_path / "cmimh" / str(b) / "metrics.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(_metrics(v)))
    write_report(tmp_path, "demo", [16, 32], ["cmimh"], tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "| Img→Txt | cmimh | 50.00 | 60.00 |" in text
    assert "| cmimh | 16 | 0.0100 | 0.0200 | 0.5000 | – |" in text
    for png in (tmp_path / "plots").glob("*.png"):
        assert f"(plots/{png.name})" in text
    assert len(list((tmp_path / "plots").glob("*.png"))) >= 2


def test_missing_metrics_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match="missing metrics file"):
        write_report(tmp_path, "demo", [16], ["cmimh"], tmp_path / "report.md")
    assert not (tmp_path / "report.md").exists()


def test_plot_train_log(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("epoch,step,loss,rec,mi,seconds\n1,10,5.0,4.0,0.1,0.2\n2,20,4.0,3.5,0.3,0.2\n")
    plot_train_log(csv, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"




@pytest.mark.parametrize("labels, needle", [
    ({"query_unlabelled": 3, "db_unlabelled": 5, "query_without_relevant": 4, "n_query": 4, "n_db": 6},
     "none of the 4 queries has a relevant database item"),
    ({"query_unlabelled": 1, "db_unlabelled": 0, "query_without_relevant": 2, "n_query": 8, "n_db": 6},
     "2 of 8 queries (25.0%) have no relevant database item (1 carry no label)"),
])
def test_report_says_when_labels_cannot_support_the_numbers(tmp_path, labels, needle):
    p = tmp_path / "cmimh" / "16" / "metrics.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({**_metrics(0.0), "labels": labels}))
    write_report(tmp_path, "demo", [16], ["cmimh"], tmp_path / "report.md")
    assert needle in (tmp_path / "report.md").read_text()


def test_train_loss_plots_what_each_method_optimises(tmp_path):
    """CVH is closed-form: its log's per-bit eigenvalues are not a curve over epochs; CMFH and
    CCA-ITQ plot their objectives per iteration; CMIMH every loss term."""
    import numpy as np

    from pipeline.methods import CCAITQ, CMFH, CVH
    from pipeline.methods.base import write_history

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 6)), rng.normal(size=(60, 5))
    for cls, want in ((CVH, []), (CMFH, list(CMFH.plot["columns"])), (CCAITQ, ["quant_loss"])):
        m = cls(4)
        write_history(tmp_path / f"{cls.name}.csv", m.fit(x, y))
        got = plot_train_log(tmp_path / f"{cls.name}.csv", tmp_path / f"{cls.name}.png", **cls.plot)
        assert got == want and "bit" not in got, cls.name
        assert (tmp_path / f"{cls.name}.png").read_bytes()[:4] == b"\x89PNG"
    csv = tmp_path / "log.csv"
    csv.write_text("epoch,step,loss,rec,mi,seconds\n1,10,5.0,4.0,0.1,0.2\n2,20,4.0,3.5,0.3,0.2\n")
    assert plot_train_log(csv, tmp_path / "loss.png") == ["loss", "rec", "mi"]


def _broken(m, path, value):
    *keys, last = path
    for k in keys:
        m = m[k]
    m[last] = value


@pytest.mark.parametrize("content, needle", [
    ("{oops", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    ("[]", "not a metrics record (a JSON list, not an object)"),
    ("{}", "no map@1000 (evaluated with another --k? its mAP keys: none)"),
    (("map@1000", "t2i"), "map@1000 must hold a value for every task"),
    (("map@1000", "i2t", "abc"), "map@1000.i2t = 'abc' is not a number between 0 and 1"),
    (("map@1000", "i2t", None), "map@1000.i2t = None is not a number"),
    (("map@1000", "i2t", 37.5), "map@1000.i2t = 37.5 is not a number between 0 and 1"),
    (("curves", "p_at_k", "i2t", ["x", 1]), "curves.p_at_k must hold k"),
    (("diagnostics", "tc_image", "high"), "diagnostics must map names to numbers"),
])
def test_a_damaged_or_incomplete_metrics_file_is_one_line(tmp_path, content, needle):
    """A metrics.json the report cannot use: one line naming the file, never a row of '–' as if the
    run had no result, a number printed from a string, or an unexpected error."""
    p = tmp_path / "cmimh" / "16" / "metrics.json"
    p.parent.mkdir(parents=True)
    if isinstance(content, tuple):
        m = _metrics(0.5)
        if len(content) == 2:
            del m[content[0]][content[1]]
        else:
            _broken(m, content[:-1], content[-1])
        p.write_text(json.dumps(m))
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    with pytest.raises(PipelineError) as e:
        write_report(tmp_path, "demo", [16], ["cmimh"], tmp_path / "report.md")
    assert str(e.value).startswith(f"{p}: ") and needle in str(e.value), str(e.value)
    assert str(e.value).endswith("rerun the evaluate stage")
    assert not (tmp_path / "report.md").exists()


def test_a_report_section_that_is_not_utf8_is_one_line(tmp_path):
    p = tmp_path / "cmimh" / "16" / "metrics.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(_metrics(0.5)))
    (tmp_path / "s.md").write_bytes(b"## T\n\xff")
    with pytest.raises(PipelineError, match=r"report section .*s\.md: not UTF-8 text \(byte 0xff at offset 5\)"):
        write_report(tmp_path, "demo", [16], ["cmimh"], tmp_path / "report.md", include=[tmp_path / "s.md"])
