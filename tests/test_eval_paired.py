"""Paired metrics (pipeline/eval/paired.py): ranks of the own pair by hand, R@K / median rank /
mAP, and a codes.h5 without labels through the evaluate stage."""

import json

import numpy as np
import pytest

from pipeline.eval.codes import read_codes, write_codes
from pipeline.eval.paired import pair_ranks, paired_metrics, summarize
from pipeline.stages import evaluate

# every test on both ranking engines (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("ranking_engine")


def packed(rows):
    return np.packbits(np.array(rows, dtype=bool), axis=1)


def test_pair_ranks_by_hand_with_ties_by_row():
    q = packed([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]])
    db = packed([[0, 0, 0, 1],   # 1 from q0 (its pair), 3 from q1, 1 from q2
                 [1, 1, 1, 1],   # q1's pair: distance 0
                 [0, 0, 0, 0]])  # q2's pair: distance 2; row 0 (distance 1) comes first, row 1 (2) ties
    # q0: distances 1, 4, 0 -> its pair (row 0) is second; q1: 3, 0, 4 -> first;
    # q2: 1, 2, 2 -> row 0 first, then rows 1 and 2 tie at 2, ties by row: its pair (row 2) third
    assert pair_ranks(q, db).tolist() == [2, 1, 3]


def test_summary_by_hand():
    s = summarize(np.array([1, 2, 3, 10, 20]))
    assert s["r@1"] == 0.2 and s["r@5"] == 0.6 and s["r@10"] == 0.8 and s["median_rank"] == 3.0
    assert s["map"] == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1 / 10, 1 / 20]))
    assert s["curve"] == {"k": [1, 2, 5], "recall": [0.2, 0.4, 0.6]}  # K up to the set size
    assert summarize(np.array([7, 1, 4, 2]))["median_rank"] == 3.0  # even count: the mean of the middle two
    r = np.random.default_rng(0).integers(1, 50, 41)
    assert summarize(r)["median_rank"] == float(np.median(r)) and summarize(r[:40])["median_rank"] == float(np.median(r[:40]))


def test_perfect_and_chance_codes():
    rng = np.random.default_rng(0)
    n, bits = 200, 32
    codes = rng.integers(0, 2, (n, bits)).astype(bool)
    c = _codes(codes, codes)
    m = paired_metrics(c)
    assert m["paired"]["i2t"]["r@1"] == 1.0 and m["pair_map"] == {"i2t": 1.0, "t2i": 1.0}
    other = rng.integers(0, 2, (n, bits)).astype(bool)
    m = paired_metrics(_codes(codes, other))
    assert m["paired"]["t2i"]["r@10"] < 0.2 and m["paired"]["i2t"]["median_rank"] > 30


def _codes(img, txt, labels=0):
    from pipeline.eval.codes import Codes

    n = len(img)
    lab = np.zeros((n, labels), np.uint8)
    return Codes(packed(img), packed(txt), packed(img), packed(txt), lab, lab, bits=img.shape[1])


def test_codes_without_labels_are_evaluated_paired(tmp_path):
    rng = np.random.default_rng(1)
    qi = rng.integers(0, 2, (50, 16))
    qt = np.where(rng.random((50, 16)) < 0.1, 1 - qi, qi)  # texts near their own images
    db = rng.integers(0, 2, (80, 16))
    none_q, none_db = np.zeros((50, 0), np.uint8), np.zeros((80, 0), np.uint8)
    write_codes(tmp_path / "codes.h5", query_image=qi, query_text=qt, db_image=db, db_text=db,
                query_labels=none_q, db_labels=none_db, bits=16)
    assert not read_codes(tmp_path / "codes.h5").labelled
    m = evaluate.run(tmp_path / "codes.h5", tmp_path / "metrics.json")
    assert not m["labelled"] and "map@1000" not in m and "labels" not in m
    assert m["paired"]["n"] == 50 and m["paired"]["i2t"]["r@10"] > 0.5
    assert m["pair_map"]["i2t"] > m["chance"]["pair_map"]["i2t"] * 3
    assert json.loads((tmp_path / "metrics.json").read_text())["paired"]["t2i"]["median_rank"] >= 1


def test_codes_with_labels_get_both_kinds(tmp_path):
    rng = np.random.default_rng(2)
    lab = lambda n: (rng.random((n, 3)) < 0.5).astype(np.uint8)  # noqa: E731
    write_codes(tmp_path / "codes.h5", query_image=rng.integers(0, 2, (20, 8)), query_text=rng.integers(0, 2, (20, 8)),
                db_image=rng.integers(0, 2, (30, 8)), db_text=rng.integers(0, 2, (30, 8)),
                query_labels=lab(20), db_labels=lab(30), bits=8)
    m = evaluate.run(tmp_path / "codes.h5", tmp_path / "metrics.json", k=10)
    assert m["labelled"] and set(m["map@10"]) == {"i2t", "t2i", "i2i", "t2t"} and m["paired"]["n"] == 20
    assert set(m["chance"]) == {"map@10", "pair_map"}
