"""The evaluate stage end to end on a hand-built codes.h5, and the plots of its metrics."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.eval.codes import read_codes, write_codes
from pipeline.stages.evaluate import run as evaluate_file
from pipeline.eval.metrics import evaluate_all

# Database (4-bit codes) and labels of the hand example in test_eval_metrics.py.
DB = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0]])
DBL = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]])
QL = np.array([[1, 0, 0], [0, 0, 1]])  # query 1's class is in no database item


@pytest.fixture()
def hand_codes(tmp_path):
    path = tmp_path / "codes.h5"
    write_codes(path, query_image=[[0, 0, 0, 0], [1, 1, 1, 1]], query_text=[[1, 1, 1, 1], [0, 0, 0, 0]],
                db_image=DB, db_text=DB, query_labels=QL, db_labels=DBL, bits=4,
                attrs={"provenance": json.dumps({"stage": "encode"})})
    return path


# image query 0000 (class 0): ranking 3,1,2,5,0,4 -> N N R R R R: AP = (1/3+2/4+3/5+4/6)/4 = 21/40
# text  query 1111 (class 0): ranking 4,0,1,2,5,3 -> R R N R R N: AP = (1+2/2+3/4+4/5)/4 = 71/80
# the second query of each modality has no relevant item: AP 0. Image and text databases coincide.
I2T_ALL, T2I_ALL = 21 / 80, 71 / 160


def test_evaluate_file_hand_values(hand_codes, tmp_path):
    out = tmp_path / "m" / "metrics.json"
    ret = evaluate_file(hand_codes, out, k=1000)
    m = json.loads(out.read_text())
    assert m["n_query"] == 2 and m["n_db"] == 6 and m["bits"] == 4
    for key in ("map@1000", "map@all", "map@50"):  # every k >= 6 is the whole database
        assert m[key]["i2t"] == pytest.approx(I2T_ALL) and m[key]["i2i"] == pytest.approx(I2T_ALL)
        assert m[key]["t2i"] == pytest.approx(T2I_ALL) and m[key]["t2t"] == pytest.approx(T2I_ALL)
    assert m["pre@100"] == pytest.approx({t: 1 / 3 for t in ("i2t", "t2i", "i2i", "t2t")})
    pk = m["curves"]["p_at_k"]
    assert pk["k"] == [1, 5, 6]
    np.testing.assert_allclose(pk["i2t"], [0, 3 / 10, 1 / 3])
    np.testing.assert_allclose(pk["t2i"], [1 / 2, 2 / 5, 1 / 3])
    pr = m["curves"]["pr"]["i2t"]
    assert pr["radius"] == [0, 1, 2, 3, 4]
    # query 1 (1111, no relevant item) retrieves 0,1,2,5,6 items: precision 0 where it counts,
    # excluded from recall.
    np.testing.assert_allclose(pr["precision"], [0, 1 / 4, 3 / 10, 1 / 3, 1 / 3])
    np.testing.assert_allclose(pr["recall"], [0, 1 / 2, 3 / 4, 1, 1])
    prov = m["provenance"]
    assert prov["codes_sha256"] == hashlib.sha256(hand_codes.read_bytes()).hexdigest()
    assert prov["stage"] == "evaluate" and prov["codes_provenance"] == {"stage": "encode"}
    assert set(m["chance"]["map@1000"]) == {"i2t", "t2i", "i2i", "t2t"}
    assert all(0.0 <= v <= 1.0 for v in m["chance"]["map@1000"].values())
    assert ret["map@all"] == m["map@all"]
    assert all(type(v) is float for v in ret["map@1000"].values())


def test_evaluate_file_small_k(hand_codes, tmp_path):
    m = evaluate_file(hand_codes, tmp_path / "metrics.json", k=2, chance=False)
    # top-2: image query N N -> 0 ; text query R R -> AP 1 ; second queries 0
    assert m["map@2"] == pytest.approx({"i2t": 0.0, "t2i": 0.5, "i2i": 0.0, "t2t": 0.5})
    assert "chance" not in m


def test_evaluate_all_threads_and_chunks_agree(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "c.h5"
    write_codes(path, query_image=rng.integers(0, 2, (37, 16)), query_text=rng.integers(0, 2, (37, 16)),
                db_image=rng.integers(0, 2, (500, 16)), db_text=rng.integers(0, 2, (500, 16)),
                query_labels=rng.random((37, 5)) < 0.3, db_labels=rng.random((500, 5)) < 0.3, bits=16)
    c = read_codes(path)
    a = evaluate_all(c, k=100)
    b = evaluate_all(c, k=100, chunk_size=5, n_threads=2)
    assert a == b


def test_evaluate_file_missing_input(tmp_path):
    with pytest.raises(PipelineError, match="missing codes file"):
        evaluate_file(tmp_path / "none.h5", tmp_path / "metrics.json")
    assert not (tmp_path / "metrics.json").exists()


def test_plots(hand_codes, tmp_path):
    from pipeline.report.figures import plot_curves, plot_curves_by_bits

    m = evaluate_file(hand_codes, tmp_path / "metrics.json", chance=False)
    paths = plot_curves_by_bits({4: m, 8: m}, tmp_path / "plots", prefix="cmimh")
    assert [p.name for p in paths] == ["cmimh_pr.png", "cmimh_p_at_k.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a metrics dict without curves still plots (empty panels), never raises
    paths = plot_curves({"map@all": {}}, tmp_path / "a.png", tmp_path / "b.png")
    assert all(p.is_file() for p in paths)
    assert not list((tmp_path / "plots").glob(".*"))


def test_labels_summary_counts_queries_without_relevant_items(hand_codes, tmp_path):
    m = evaluate_file(hand_codes, tmp_path / "metrics.json", k=1000)
    # query 1's class (2) is in no database item: it has labels but no relevant item
    assert m["labels"] == {"query_unlabelled": 0, "db_unlabelled": 0, "query_without_relevant": 1,
                           "n_query": 2, "n_db": 6}
