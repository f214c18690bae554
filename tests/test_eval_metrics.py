"""Metrics on hand-computed examples, and the fast paths against slow references."""

from __future__ import annotations

from fractions import Fraction as F

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.eval.metrics import (
    map_at_k,
    pk_grid,
    pr_curve,
    precision_at_k,
    rank_metrics,
    recall_one_at_k,
)

# every test on both ranking engines (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("ranking_engine")


def _reference_map_at_k(q_packed: np.ndarray, db_packed: np.ndarray, q_labels: np.ndarray,
                        db_labels: np.ndarray, k: int | None = None) -> float:
    """Slow, obviously-correct mAP@k (per-query loop on unpacked bits) to test the fast path."""
    qb = np.unpackbits(np.asarray(q_packed, dtype=np.uint8), axis=1).astype(np.int64)
    dbb = np.unpackbits(np.asarray(db_packed, dtype=np.uint8), axis=1).astype(np.int64)
    ql = np.asarray(q_labels, dtype=np.int64)
    dbl = np.asarray(db_labels, dtype=np.int64)
    ndb = dbb.shape[0]
    kk = ndb if k is None else min(int(k), ndb)
    total = 0.0
    for i in range(qb.shape[0]):
        dist = np.abs(dbb - qb[i]).sum(axis=1)
        order = np.argsort(dist, kind="stable")[:kk]
        relevant = (dbl[order] @ ql[i]) > 0
        hits, ap_sum = 0, 0.0
        for pos, rel in enumerate(relevant, start=1):
            if rel:
                hits += 1
                ap_sum += hits / pos
        total += ap_sum / hits if hits else 0.0
    return total / qb.shape[0]


def P(rows):
    return np.packbits(np.array(rows, dtype=bool), axis=1)


# Database of the hand example (4-bit codes). For the query 0000 the distances are
#   item:      0     1     2     3     4     5
#   code:   1100  1000  0100  0000  1110  0010
#   dist:      2     1     1     0     3     1
#   label:   [1,0,0] [0,1,0] [1,1,0] [0,1,0] [1,0,0] [1,0,0]
# Ranking by (distance, index): 3, 1, 2, 5, 0, 4 -> relevance to class 0: N N R R R R.
DB = P([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0]])
DBL = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]], np.uint8)
Q = P([[0, 0, 0, 0], [1, 1, 1, 1]])
QL = np.array([[1, 0, 0], [0, 0, 1]], np.uint8)  # query 1's class occurs nowhere: AP = 0


def test_map_hand_example_ties_by_index():
    # AP@all(q0) = (1/3 + 2/4 + 3/5 + 4/6) / 4 = 21/40 ; AP(q1) = 0  -> mAP@all = 21/80
    assert map_at_k(Q, DB, QL, DBL, None) == pytest.approx(float(F(21, 80)), abs=1e-12)
    # AP@4(q0) = (1/3 + 2/4) / 2 = 5/12 -> mAP@4 = 5/24. A descending tie order (5, 2, 1)
    # would give N R R N: (1/2 + 2/3) / 2 = 7/12 instead.
    assert map_at_k(Q, DB, QL, DBL, 4) == pytest.approx(5 / 24, abs=1e-12)
    # top-2 of q0 is N N: no relevant item within k scores 0
    assert map_at_k(Q, DB, QL, DBL, 2) == 0.0


def test_query_without_relevant_item_scores_zero():
    assert map_at_k(Q[1:], DB, QL[1:], DBL, None) == 0.0
    assert map_at_k(Q[1:], DB, QL[1:], DBL, 3) == 0.0


def test_k_larger_than_database_is_map_all():
    assert map_at_k(Q, DB, QL, DBL, 1000) == pytest.approx(21 / 80, abs=1e-12)
    assert map_at_k(Q, DB, QL, DBL, 1000) == map_at_k(Q, DB, QL, DBL, None)


def test_precision_at_k_hand():
    # q0 ranked relevance N N R R R R, q1 none. P@K' with K' = min(K, 6).
    p = precision_at_k(Q, DB, QL, DBL, [1, 3, 4, 6, 100])
    np.testing.assert_allclose(p, [0, 1 / 6, 1 / 4, 1 / 3, 1 / 3], atol=1e-12)


def test_pr_by_radius_one_query():
    pr = pr_curve(Q[:1], DB, QL[:1], DBL, bits=4)
    assert pr["radius"] == [0, 1, 2, 3, 4]
    # r=0: {3}: 0/1 ; r=1: {3,1,2,5}: 2/4 ; r=2: +0: 3/5 ; r=3: +4: 4/6 ; r=4: same. 4 relevant.
    np.testing.assert_allclose(pr["precision"], [0, 1 / 2, 3 / 5, 4 / 6, 4 / 6], atol=1e-12)
    np.testing.assert_allclose(pr["recall"], [0, 2 / 4, 3 / 4, 1, 1], atol=1e-12)
    assert pr["n_retrieving"] == [1, 1, 1, 1, 1]


def test_pr_skips_queries_retrieving_nothing():
    # q2 = 1111 (class 0): distances 2 3 3 4 1 3 -> nothing at r=0, {4} (relevant) at r=1.
    q = P([[0, 0, 0, 0], [1, 1, 1, 1]])
    ql = np.array([[1, 0, 0], [1, 0, 0]], np.uint8)
    pr = pr_curve(q, DB, ql, DBL, bits=4)
    assert pr["n_retrieving"][:2] == [1, 2]
    assert pr["precision"][0] == pytest.approx(0.0)  # only q0 counts: 0/1
    assert pr["precision"][1] == pytest.approx((1 / 2 + 1) / 2)
    assert pr["recall"][1] == pytest.approx((2 / 4 + 1 / 4) / 2)


def test_pr_no_query_retrieves_anything_is_zero_with_count():
    pr = pr_curve(P([[1, 1, 1, 1]]), P([[0, 0, 0, 0]]), np.array([[1]]), np.array([[1]]), bits=4)
    assert pr["precision"][:4] == [0.0] * 4 and pr["n_retrieving"] == [0, 0, 0, 0, 1]
    assert pr["precision"][4] == 1.0 and pr["recall"] == [0, 0, 0, 0, 1]


def test_recall_one_at_k_hand():
    # query 0000's pair is item 2: ranking 3, 1, 2 -> rank 3. Query 1111's pair is item 0:
    # distances 2 3 3 4 1 3 -> ranking 4, 0 -> rank 2. The middle query has no pair (-1).
    q = P([[0, 0, 0, 0], [0, 1, 0, 1], [1, 1, 1, 1]])
    r = recall_one_at_k(q, DB, np.array([2, -1, 0]), [1, 2, 3, 10])
    np.testing.assert_allclose(r, [0, 1 / 2, 1, 1])
    with pytest.raises(PipelineError, match="pair_index"):
        recall_one_at_k(q, DB, np.array([2, 6, 0]), [1])


@pytest.mark.parametrize("bits", [8, 64, 72])  # one code word (counted from the codes), a full one, two
def test_recall_one_matches_ranking_random(bits):
    rng = np.random.default_rng(bits)
    q = P(rng.integers(0, 2, (50, bits)))
    db = P(rng.integers(0, 2, (400, bits)))
    pair = rng.integers(-1, 400, 50)
    pair[:2] = [0, 399]  # the first and the last database row
    from pipeline.eval.hamming import topk

    idx, _ = topk(q, db, 400)
    rank = np.array([np.flatnonzero(idx[i] == pair[i])[0] if pair[i] >= 0 else -1 for i in range(50)])
    ks = [1, 5, 50, 200]
    expect = [(rank[pair >= 0] < k).mean() for k in ks]
    np.testing.assert_allclose(recall_one_at_k(q, db, pair, ks, chunk_size=7), expect)


def test_pk_grid():
    assert pk_grid(6) == [1, 5, 6]
    assert pk_grid(250) == [1, 5, 10, 20, 50, 100, 200, 250]
    g = pk_grid(117000)
    assert g[:6] == [1, 5, 10, 20, 50, 100] and g[-1] == 5000 and len(g) == 55


# ----------------------------------------------------------------------------- random, heavy ties

def _slow_pk_pr(q, db, ql, dbl, ks, bits):
    qb = np.unpackbits(q, axis=1).astype(int)
    dbb = np.unpackbits(db, axis=1).astype(int)
    pk, prec, rec = [], [[] for _ in range(bits + 1)], [[] for _ in range(bits + 1)]
    for i in range(len(q)):
        dist = np.abs(dbb - qb[i]).sum(1)
        rel = (dbl @ ql[i]) > 0
        order = np.argsort(dist, kind="stable")
        pk.append([rel[order[:k]].mean() for k in ks])
        for r in range(bits + 1):
            got = dist <= r
            if got.any():
                prec[r].append(rel[got].mean())
            if rel.any():
                rec[r].append(rel[got].sum() / rel.sum())
    return (np.mean(pk, axis=0), [np.mean(p) if p else 0.0 for p in prec], [np.mean(r) for r in rec])


@pytest.fixture(scope="module")
def random_ties():
    rng = np.random.default_rng(42)
    nq, ndb = 300, 2000
    q, db = P(rng.integers(0, 2, (nq, 8))), P(rng.integers(0, 2, (ndb, 8)))
    ql = (rng.random((nq, 10)) < 0.1).astype(np.uint8)
    dbl = (rng.random((ndb, 10)) < 0.1).astype(np.uint8)
    return q, db, ql, dbl


@pytest.mark.parametrize("k", [1, 50, 450, 1000, None])
def test_fast_map_matches_reference(random_ties, k):
    q, db, ql, dbl = random_ties
    ref = _reference_map_at_k(q, db, ql, dbl, k)
    for chunk, pr in [(7, None), (64, 8), (None, None), (None, 8)]:  # the PR bound forces counting
        m = rank_metrics(q, db, ql, dbl, map_ks=[k], chunk_size=chunk, pr_bits=pr)
        got = float(next(iter(m["ap"].values())).mean())
        assert got == pytest.approx(ref, abs=1e-10), (chunk, pr)


def test_fast_pk_and_pr_match_reference(random_ties):
    q, db, ql, dbl = random_ties
    ks = [1, 5, 10, 100, 450, 2000]
    pk_ref, prec_ref, rec_ref = _slow_pk_pr(q, db, ql, dbl, ks, 8)
    np.testing.assert_allclose(precision_at_k(q, db, ql, dbl, ks, chunk_size=13), pk_ref, atol=1e-12)
    m = rank_metrics(q, db, ql, dbl, pk=ks[:4], chunk_size=11)  # top-k path
    np.testing.assert_allclose((m["hits"] / np.array(ks[:4])).mean(0), pk_ref[:4], atol=1e-12)
    pr = pr_curve(q, db, ql, dbl, bits=8, chunk_size=17, n_threads=2)
    np.testing.assert_allclose(pr["precision"], prec_ref, atol=1e-12)
    np.testing.assert_allclose(pr["recall"], rec_ref, atol=1e-12)


def test_map_wide_codes_and_many_classes():
    """>64 classes (several label words) and 72-bit codes (padded words) on both paths."""
    rng = np.random.default_rng(7)
    q, db = P(rng.integers(0, 2, (40, 72))), P(rng.integers(0, 2, (900, 72)))
    ql = (rng.random((40, 70)) < 0.03).astype(np.uint8)
    dbl = (rng.random((900, 70)) < 0.03).astype(np.uint8)
    for k in (20, None):
        ref = _reference_map_at_k(q, db, ql, dbl, k)
        assert map_at_k(q, db, ql, dbl, k, chunk_size=9) == pytest.approx(ref, abs=1e-10)


def test_label_shape_errors():
    with pytest.raises(PipelineError, match="classes"):
        map_at_k(Q, DB, QL, DBL[:, :2], 3)
    with pytest.raises(PipelineError, match="rows"):
        map_at_k(Q, DB, QL[:1], DBL, 3)


def test_two_byte_keys_path(random_ties):
    """Codes of 128 bits or more need two-byte keys (2 x distance + relevant > 255)."""
    rng = np.random.default_rng(11)
    q, db = P(rng.integers(0, 2, (30, 136))), P(rng.integers(0, 2, (700, 136)))
    q[:3] = db[:3]
    ql = (rng.random((30, 6)) < 0.3).astype(np.uint8)
    dbl = (rng.random((700, 6)) < 0.3).astype(np.uint8)
    for k in (10, None):
        ref = _reference_map_at_k(q, db, ql, dbl, k)
        assert map_at_k(q, db, ql, dbl, k, chunk_size=7) == pytest.approx(ref, abs=1e-10)
    from pipeline.eval import hamming

    idx, _ = hamming.topk(q, db, 700)
    np.testing.assert_array_equal(idx, np.argsort(hamming.hamming_distances(q, db), axis=1, kind="stable"))


def test_paired_recall_one_by_hand():
    from pipeline.eval.codes import Codes
    from pipeline.eval.metrics import paired_recall_one

    # db image codes 0b00.., text codes: row 0 equal to image 0, row 1 far from image 1, row 2 equal to image 2
    img = np.packbits(np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.uint8), axis=1)
    txt = np.packbits(np.array([[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]], np.uint8), axis=1)
    lab = np.ones((3, 1), np.uint8)
    c = Codes(query_image=img[:1], query_text=txt[:1], db_image=img, db_text=txt, query_labels=lab[:1],
              db_labels=lab, bits=4)
    r = paired_recall_one(c, ks=[1, 2, 3])
    # i2t: image0 -> text0 at distance 0 (rank 1); image1 (1100) -> distances to texts 2,3,2: own text1
    # is rank 3 (text0 and text2 tie at 2 with lower... text0 d=2, text2 d=2, text1 d=3) -> rank 3;
    # image2 -> text2 d=0 rank 1.  RecallOne@1 = 2/3, @2 = 2/3, @3 = 1.
    assert r["i2t"] == pytest.approx([2 / 3, 2 / 3, 1.0])
    # t2i: text1 (0001) -> images d=1, 3, 3: own image1 at d=3 ties with image2, index 1 first -> rank 2.
    assert r["t2i"] == pytest.approx([2 / 3, 1.0, 1.0])


def test_cosine_map_matches_a_per_query_loop():
    """The continuous reference (no hashing): rank by cosine, ties by index, AP as for codes."""
    from pipeline.eval.metrics import cosine_map_at_k

    rng = np.random.default_rng(4)
    q, db = rng.normal(size=(30, 5)), rng.normal(size=(80, 5))
    db[10] = db[3] * 2.0  # the same direction: a tie, broken by the index
    ql, dbl = (rng.random((30, 3)) < 0.4).astype(np.uint8), (rng.random((80, 3)) < 0.4).astype(np.uint8)
    for k in (1, 7, 80, 1000):
        total = 0.0
        for i in range(len(q)):
            sim = (db @ q[i]) / (np.linalg.norm(db, axis=1) * np.linalg.norm(q[i]))
            order = sorted(range(len(db)), key=lambda j: (-round(sim[j], 12), j))[:min(k, len(db))]
            rel = [(ql[i] & dbl[j]).any() for j in order]
            hits, s = 0, 0.0
            for pos, r in enumerate(rel, 1):
                if r:
                    hits += 1
                    s += hits / pos
            total += s / hits if hits else 0.0
        assert cosine_map_at_k(q, db, ql, dbl, k, chunk=7) == pytest.approx(total / len(q), abs=1e-12), k


# ----------------------------------------------------------------------------- against today's implementation

def _assert_same(a, b, path=""):
    """Every number of ``a`` equals ``b``'s to 1e-9 (same keys, lists, ints)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=1e-9), path
    else:
        assert a == b, path


@pytest.mark.parametrize("bits, nq, ndb, classes, p", [(8, 70, 1500, 6, 0.3), (16, 40, 6000, 24, 0.1),
                                                       (64, 25, 900, 3, 0.5), (130, 20, 400, 70, 0.05)])
def test_every_metric_equals_todays_implementation(bits, nq, ndb, classes, p):
    """The counting core against the sort-based evaluation it replaced (tests/legacy_eval.py), on
    random codes with many ties (8 and 16 bits: hundreds of items per distance), every metric of
    the four tasks, RecallOne@K, the chance level and the continuous (cosine) reference."""
    import legacy_eval

    from pipeline.eval.codes import Codes
    from pipeline.eval.metrics import chance_level, continuous_metrics, evaluate_all

    rng = np.random.default_rng(bits)
    code = lambda n: P(rng.integers(0, 2, (n, bits)))  # noqa: E731
    qi, qt, di, dt = code(nq), code(nq), code(ndb), code(ndb)
    qi[:3] = di[:3]  # duplicates: distance 0
    ql = (rng.random((nq, classes)) < p).astype(np.uint8)
    dbl = (rng.random((ndb, classes)) < p).astype(np.uint8)
    ql[0] = 0  # a query with no label: AP 0
    real = {"query_image": rng.normal(size=(nq, 5)), "query_text": rng.normal(size=(nq, 5)),
            "db_image": rng.normal(size=(ndb, 5)), "db_text": rng.normal(size=(ndb, 5))}
    real["db_text"][7] = real["db_text"][2] * 3  # a cosine tie
    c = Codes(query_image=qi, query_text=qt, db_image=di, db_text=dt, query_labels=ql, db_labels=dbl, bits=bits,
              real=real)
    for k in (1000, 50, 3):
        _assert_same(legacy_eval.evaluate_all(c, k=k), evaluate_all(c, k=k, chunk_size=7, n_threads=2))
    _assert_same(legacy_eval.evaluate_all(c), evaluate_all(c))
    _assert_same(legacy_eval.chance_level(c, 100), chance_level(c, 100))
    _assert_same(legacy_eval.continuous_metrics(c, 20), continuous_metrics(c, 20))


def test_one_engine_ranks_every_task_of_a_call(monkeypatch):
    """rank_metrics_tasks picks its engine from all the tasks' pairs together; each task's
    distances then come from that engine too, even where one task alone would take the NumPy
    twins (and the numbers are the NumPy twins' numbers)."""
    from pipeline.eval import hamming, numpy_kernels
    from pipeline.eval.metrics import rank_metrics_tasks

    rng = np.random.default_rng(3)
    nq, ndb, T = 30, 400, 4
    tasks = [(rng.integers(0, 256, (nq, 2), dtype=np.uint8), rng.integers(0, 256, (ndb, 2), dtype=np.uint8))
             for _ in range(T)]
    ql, dl = rng.random((nq, 5)) < 0.3, rng.random((ndb, 5)) < 0.3
    monkeypatch.setattr(hamming, "ENGINE", "numpy")
    ref = rank_metrics_tasks(tasks, ql, dl, map_ks=[10], pk=[5, 20])
    monkeypatch.setattr(hamming, "ENGINE", "auto")
    monkeypatch.setattr(hamming, "COMPILED_FROM_PAIRS", T * nq * ndb)  # the call: compiled; one task alone: NumPy

    def refuse(*a, **k):
        raise AssertionError("a task's distances went through the NumPy twins in a compiled call")

    monkeypatch.setattr(numpy_kernels, "distances", refuse)
    got = rank_metrics_tasks(tasks, ql, dl, map_ks=[10], pk=[5, 20])
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g["ap"][10], r["ap"][10], rtol=0, atol=1e-12)
        assert np.array_equal(g["hits"], r["hits"])
