"""The paper's reported numbers (pipeline/report/reported.py) against the paper's own text: every
row of Tables V-VIII is found, value for value, in ../shared/paper/cmimh-paper.txt."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.report import reported as R

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "cmimh-paper.txt"
needs_paper = pytest.mark.skipif(not PAPER.is_file(), reason=f"the paper's text is not at {PAPER}")


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def number(c: str):
    return None if c == "-" else float(c)


def blocks() -> dict[str, list[list[str]]]:
    """The paper's table rows, by table: the rows after each table's header in section IV-C."""
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    start = next(i for i, s in enumerate(lines) if s.startswith("Comparison with Unsupervised Deep Cross Modal"))
    stop = next(i for i, s in enumerate(lines) if s.startswith("Effect of training size"))
    out: dict[str, list[list[str]]] = {"V": [], "VI": [], "VII": [], "VIII": []}
    order, table = ["V", "VI", "VIII"], None
    for s in lines[start:stop]:
        if s.startswith("| Task | Method |"):
            table = order.pop(0)
        elif s.startswith("| Method |"):
            table = "VII"
        elif s.startswith("|") and table:
            out[table].append(cells(s))
    return out


def rows_of(table: str, method: str) -> list[list[float | None]]:
    """The numbers of each row naming ``method``, in the paper's order (Img->Txt first)."""
    out = []
    for row in blocks()[table]:
        at = [i for i, c in enumerate(row) if c == method or c.startswith(method + " [")]  # "FSH [29]"
        if at:
            vals = [c for c in row[at[0] + 1:] if c]
            out.append([number(c) for c in vals])
    return out


@needs_paper
@pytest.mark.parametrize("table", ["V", "VI"])
def test_tables_v_and_vi_match_the_paper(table):
    (metric, tasks), = R.REPORTED[table].items()
    for method in tasks["i2t"]:
        rows = rows_of(table, method)
        assert len(rows) == 2, (table, method, rows)
        for task, row in zip(("i2t", "t2i"), rows):
            mine = [v for d in (R.MIR, R.NUS) for v in R.reported(table, metric, task, method, d).values()]
            assert mine == row, (table, method, task)


@needs_paper
def test_table_vii_matches_the_paper():
    for method in ("LDR (1024-D)", "CMIMH (128 bits)"):
        (row,) = rows_of("VII", method)
        i2t, t2i = (R.reported("VII", "recall_one", t, method, R.MIR) for t in ("i2t", "t2i"))
        assert [i2t[1], i2t[10], t2i[1], t2i[10]] == row


@needs_paper
def test_table_viii_matches_the_paper():
    for method in R.REPORTED["VIII"]["map@all"]["i2t"]:
        rows = rows_of("VIII", method)
        assert len(rows) == 2, (method, rows)
        for task, row in zip(("i2t", "t2i"), rows):
            got = list(R.reported("VIII", "map@all", task, method, R.NUS).values())
            pre = R.reported("VIII", "pre@100", task, method, R.NUS)
            assert got == row[:3], (method, task)
            # CRE's Pre@100 is "-" twice in the paper (its third cell is empty)
            assert [pre[32], pre[64]] == (row[3:5] if len(row) >= 5 else [None, None]), (method, task)


def test_hand_picked_values():
    assert R.reported("V", "map@50", "t2i", "UDCMH", R.NUS) == {16: 63.7, 32: 65.3, 64: 69.5}
    assert R.reported("VI", "map@all", "i2t", "UKD-SS", R.MIR)[64] == 72.5
    assert R.reported("VIII", "pre@100", "t2i", "FSH", R.NUS) == {32: 53.88, 64: 56.85}
    assert R.reported("V", "map@50", "i2t", "UDCMH", "demo") == {}


def test_reported_rows_skip_what_we_run_and_the_papers_cmimh():
    rows = R.reported_rows("VIII", "map@all", "i2t", R.NUS, ["cmimh", "cvh", "fsh"])
    assert list(rows) == ["PDH", "CMFH", "ACQ", "CRE"]
    assert list(R.reported_rows("VIII", "map@all", "i2t", R.NUS, list(R.OURS_AS_REPORTED.values()))) == ["CRE"]
    assert list(R.reported_rows("VI", "map@all", "t2i", R.MIR, ["cmimh"])) == ["MGAH", "UKD-SS"]
    assert R.paper_row("V", "map@50", "i2t", R.MIR) == {16: 83.2, 32: 86.5, 64: 88.2}


def test_unknown_rows_are_one_line():
    with pytest.raises(PipelineError, match="no reported row 'DCMH'"):
        R.reported("V", "map@50", "i2t", "DCMH", R.MIR)
    with pytest.raises(PipelineError, match="no reported numbers for table 'IX'"):
        R.reported("IX", "map@50", "i2t", "UDCMH", R.MIR)
