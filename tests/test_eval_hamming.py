"""Exact Hamming ranking: distances, stable top-k under heavy ties, chunking and threads, and the
sample-guessed threshold repaired when the sample misleads."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.eval import hamming
from pipeline.eval.hamming import hamming_distances, topk


def _codes(rng, n, bits):
    return np.packbits(rng.integers(0, 2, (n, bits)).astype(bool), axis=1)


def _slow_distances(q, db, bits):
    qb = np.unpackbits(q, axis=1)[:, :bits].astype(int)
    dbb = np.unpackbits(db, axis=1)[:, :bits].astype(int)
    return (qb[:, None, :] != dbb[None, :, :]).sum(-1)


@pytest.mark.usefixtures("ranking_engine")
def test_hand_example_ties_by_index():
    q = np.packbits(np.array([[0, 0, 0, 0]], bool), axis=1)
    db = np.packbits(np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0],
                               [0, 0, 1, 0]], bool), axis=1)
    np.testing.assert_array_equal(hamming_distances(q, db), [[2, 1, 1, 0, 3, 1]])
    idx, dist = topk(q, db, 4)
    np.testing.assert_array_equal(idx, [[3, 1, 2, 5]])  # the three at distance 1 by index
    np.testing.assert_array_equal(dist, [[0, 1, 1, 1]])
    idx, dist = topk(q, db, 100)  # k > database: everything, k' = 6
    np.testing.assert_array_equal(idx, [[3, 1, 2, 5, 0, 4]])
    assert idx.dtype == np.int64


@pytest.mark.parametrize("bits", [8, 13, 32, 64, 100, 300])
@pytest.mark.usefixtures("ranking_engine")
def test_distances_match_bit_count(bits):
    rng = np.random.default_rng(bits)
    q, db = _codes(rng, 9, bits), _codes(rng, 31, bits)
    np.testing.assert_array_equal(hamming_distances(q, db), _slow_distances(q, db, bits))


@pytest.mark.parametrize("k, chunk, threads", [(1, 7, 1), (37, 64, 1), (500, None, 1), (1999, 13, 2),
                                               (2000, 41, 1), (5000, None, 2)])
def test_topk_matches_stable_argsort_heavy_ties(k, chunk, threads):
    rng = np.random.default_rng(k)
    q, db = _codes(rng, 300, 8), _codes(rng, 2000, 8)  # 8 bits: ~250 items per distance value
    d = _slow_distances(q, db, 8)
    ref = np.argsort(d, axis=1, kind="stable")[:, :k]
    idx, dist = topk(q, db, k, chunk_size=chunk, n_threads=threads)
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_array_equal(dist, np.take_along_axis(d, ref, axis=1))


def test_topk_large_db_sample_threshold_and_repair():
    """Databases above the sample size use the sampled threshold; a sample that sees only the
    close items (every other row is the query itself) guesses too small a radius, repaired."""
    rng = np.random.default_rng(5)
    q, db = _codes(rng, 20, 16), _codes(rng, 9000, 16)
    ref = np.argsort(_slow_distances(q, db, 16), axis=1, kind="stable")[:, :300]
    np.testing.assert_array_equal(topk(q, db, 300)[0], ref)
    np.testing.assert_array_equal(topk(q, db, 300, chunk_size=6)[0], ref)
    one = q[:1]
    trap = np.repeat(one, 9000, axis=0)
    trap[1::2] ^= np.uint8(0xFF)  # odd rows at distance 16, even rows (the sample, stride 2) at 0
    trap[1::6, 0] ^= np.uint8(0x0F)  # some odd rows at distance 12
    d = _slow_distances(one, trap, 16)
    for k in (4000, 5000, 6000, 9000):
        idx, dist = topk(one, trap, k)
        want = np.argsort(d, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(dist, np.take_along_axis(d, want, axis=1))


def test_topk_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(PipelineError, match="k must be"):
        topk(_codes(rng, 2, 8), _codes(rng, 3, 8), 0)
    with pytest.raises(PipelineError, match="differ in shape"):
        topk(_codes(rng, 2, 8), _codes(rng, 3, 16), 1)


def test_database_prepared_once_answers_like_topk(tmp_path):
    """A service's Database: memory-mapped read-only codes (no copy at 64 bits), reused buffers
    between calls, single queries and batches on threads: all equal to topk."""
    rng = np.random.default_rng(9)
    db = _codes(rng, 5000, 64)
    path = tmp_path / "codes.bin"
    db.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=db.shape)
    base = hamming.Database(mm)
    assert np.shares_memory(base.dbT, mm)
    q = _codes(rng, 40, 64)
    q[:4] = db[[0, 10, 10, 4999]]
    want = topk(q, db, 25)
    for i in range(5):
        got = base.topk(q[i:i + 1], 25)
        np.testing.assert_array_equal(got[0], want[0][i:i + 1])
    for threads, chunk in ((1, None), (2, 3), (2, None)):
        got = base.topk(q, 25, chunk, n_threads=threads)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(PipelineError, match="differ in shape"):
        base.topk(_codes(rng, 2, 16), 3)


def test_engine_by_size_and_setting(monkeypatch):
    """Small problems rank with the NumPy twins (no numba start-up), real sizes with the compiled
    kernels, and so do small ones once a process has loaded the kernels; CMIMH_RANKING_ENGINE
    (hamming.ENGINE) forces either, anything else is one line."""
    import sys

    from pipeline.eval import kernels

    monkeypatch.setattr(hamming, "ENGINE", "auto")
    assert hamming.compiled_engine(hamming.COMPILED_FROM_PAIRS - 1) is kernels  # loaded above: no start-up left
    assert hamming.compiled_engine(1) is kernels
    monkeypatch.delitem(sys.modules, "pipeline.eval.kernels")  # as in a process that has not loaded them
    assert hamming.compiled_engine(hamming.COMPILED_FROM_PAIRS - 1) is None
    assert "pipeline.eval.kernels" not in sys.modules  # deciding did not import them
    assert hamming.compiled_engine(hamming.COMPILED_FROM_PAIRS) is kernels
    monkeypatch.setattr(hamming, "ENGINE", "numpy")
    assert hamming.compiled_engine(10 ** 12) is None
    monkeypatch.setattr(hamming, "ENGINE", "compiled")
    assert hamming.compiled_engine(1) is kernels
    monkeypatch.setattr(hamming, "ENGINE", "fast")
    with pytest.raises(PipelineError, match="CMIMH_RANKING_ENGINE must be auto, numpy or compiled"):
        hamming.compiled_engine(1)
