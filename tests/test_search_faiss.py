"""The optional faiss-cpu backend: exact flat index == topk (ties by index); hash index is sane."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("faiss")

from pipeline.errors import PipelineError  # noqa: E402
from pipeline.eval.hamming import hamming_distances, topk  # noqa: E402
from pipeline.search import faiss_backend  # noqa: E402
from pipeline.search.faiss_backend import FaissBinaryIndex  # noqa: E402


def _codes(n: int, bits: int, seed: int) -> np.ndarray:
    return np.packbits(np.random.default_rng(seed).integers(0, 2, (n, bits)).astype(np.uint8), axis=1)


@pytest.mark.parametrize("bits", [16, 12])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_flat_matches_topk_with_heavy_ties(bits, k):
    db, q = _codes(3000, bits, 0), _codes(50, bits, 1)
    q[:5] = db[[3, 700, 700, 2999, 0]]  # exact duplicates too
    want_i, want_d = topk(q, db, k)
    got_i, got_d = FaissBinaryIndex(db, "flat").search(q, k)
    assert got_i.dtype == np.int64 and got_i.shape == (50, k)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d.astype(got_d.dtype))


def test_flat_k_at_least_ndb_and_wide_codes():
    db, q = _codes(40, 64, 2), _codes(7, 64, 3)
    for k in (39, 40, 100):
        gi, gd = FaissBinaryIndex(db).search(q, k)
        wi, wd = topk(q, db, k)
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_array_equal(gd, wd)


def test_hash_returns_valid_ids_with_correct_distances():
    db, q = _codes(3000, 16, 4), _codes(50, 16, 5)
    dup = np.arange(0, 50, 2)
    q[dup] = db[dup * 37]
    idx, dist = FaissBinaryIndex(db, "hash").search(q, 10)
    assert idx.shape == dist.shape == (50, 10)
    full = hamming_distances(q, db).astype(int)
    found = idx >= 0
    assert found[:, 0].all()
    assert ((idx < 3000) & (idx >= -1)).all()
    rows = np.nonzero(found)[0]
    np.testing.assert_array_equal(dist[found], full[rows, idx[found]])
    assert (dist[~found] == -1).all()
    for r in range(50):  # ordered by (distance, index), no repeats
        i, d = idx[r][found[r]], dist[r][found[r]]
        assert len(set(i)) == len(i)
        assert list(zip(d, i)) == sorted(zip(d, i))
    assert (dist[dup, 0] == 0).all()
    assert all(full[r, idx[r, 0]] == 0 for r in dup)


def test_multihash_and_bad_parameters():
    db, q = _codes(2000, 32, 6), _codes(20, 32, 7)
    q[:5] = db[:5]
    idx, dist = FaissBinaryIndex(db, "hash", b=8, nhash=3, nflip=1).search(q, 5)
    assert (dist[:5, 0] == 0).all()
    with pytest.raises(PipelineError):
        FaissBinaryIndex(db, "hash", b=16, nhash=3)
    with pytest.raises(PipelineError):
        FaissBinaryIndex(db, "ivf")


def test_missing_faiss_is_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    assert not faiss_backend.available()
    with pytest.raises(PipelineError, match=r"pip install faiss-cpu") as e:
        FaissBinaryIndex(_codes(10, 8, 0))
    assert "\n" not in str(e.value)


def _fake_index(db: np.ndarray):
    from pipeline.search.index import Index

    code = np.unpackbits(db[5:6], axis=1)[:, :16]
    model = SimpleNamespace(encode_text=lambda x: code)
    return Index(Path("."), 16, db, db, np.array([f"id{i}" for i in range(len(db))]), None, None, {},
                 model, None)


def test_index_search_backends_agree(monkeypatch):
    from pipeline.search import index as index_mod

    monkeypatch.setattr(index_mod, "text_query_features", lambda index, texts: np.zeros((1, 3)))
    ix = _fake_index(_codes(3000, 16, 8))
    exact = index_mod.search(ix, text="a query", k=50)
    assert index_mod.search(ix, text="a query", k=50, backend="faiss") == exact
    assert "faiss-image-flat" in ix.encoders
    hits = index_mod.search(ix, text="a query", k=50, backend="faiss-hash")
    assert "faiss-image-hash" in ix.encoders and 1 <= len(hits) <= 50
    assert hits[0]["distance"] == 0
    with pytest.raises(PipelineError, match="unknown search backend"):
        index_mod.search(ix, text="a query", k=5, backend="annoy")


def test_search_threads_one_for_a_single_query_the_cores_for_a_batch(monkeypatch):
    monkeypatch.setattr(faiss_backend.os, "cpu_count", lambda: 6)
    assert faiss_backend.search_threads(1) == 1 and faiss_backend.search_threads(1, 8) == 1
    assert faiss_backend.search_threads(50) == 6 and faiss_backend.search_threads(50, 3) == 3
    assert faiss_backend.search_threads(50, 1) == 1


def test_search_sets_omp_threads_per_call_and_restores_them(monkeypatch):
    """One query searches on 1 OpenMP thread, a batch on n_threads; faiss's setting is put back."""
    import faiss

    db, q = _codes(500, 32, 0), _codes(20, 32, 1)
    index = FaissBinaryIndex(db, "flat")
    seen, real_search = [], index.index.search
    monkeypatch.setattr(index.index, "search", lambda *a: (seen.append(faiss.omp_get_max_threads()), real_search(*a))[1])
    before = faiss.omp_get_max_threads()
    one_i, _ = index.search(q[:1], 5, n_threads=2)
    all_i, _ = index.search(q, 5, n_threads=2)
    assert seen == [1, 2] and faiss.omp_get_max_threads() == before
    assert np.array_equal(one_i[0], all_i[0]) and np.array_equal(all_i, topk(q, db, 5)[0])
