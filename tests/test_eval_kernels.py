"""pipeline.eval.kernels: how the module loads numba, and the AVX-512 blocks and their kernel,
ranked_stats_simd, against NumPy and the scalar kernel (the other kernels' numbers are tested
through their callers, tests/test_eval_hamming.py and tests/test_eval_metrics.py). The blocks run
only where the CPU has AVX-512 VBMI2; elsewhere those tests skip, and the scalar path, tested
everywhere, is the one used."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from pipeline.errors import PipelineError
from pipeline.eval import kernels

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (what is imported depends on the process's history);
    it prints one JSON line."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_first_kernel_does_not_import_scipy_linalg_and_blas_still_works():
    got = _run("""
        import json, sys
        import numpy as np
        from pipeline.eval import kernels
        d = np.zeros((1, 8), np.uint8)
        kernels.distances(np.array([[5]], np.uint64), np.arange(8, dtype=np.uint64)[None, :], d)
        linalg_after_kernel = "scipy.linalg" in sys.modules
        import numba.np.arraymath as am
        from numba import njit
        import scipy.linalg.cython_blas  # the hidden entry is gone: SciPy's BLAS imports

        @njit
        def dot(a, b):
            return np.dot(a, b)

        a = np.arange(6.0).reshape(2, 3)
        print(json.dumps({"linalg": linalg_after_kernel, "have_blas": am._HAVE_BLAS,
                          "dist": d[0].tolist(), "dot_ok": bool(np.allclose(dot(a, a.T), a @ a.T))}))
    """)
    assert got["linalg"] is False  # the 0.25 s probe skipped
    assert got["have_blas"] is False  # numba's correlate/convolve use their own loop
    assert got["dist"] == [bin(5 ^ j).count("1") for j in range(8)]
    assert got["dot_ok"]  # numba's BLAS-backed np.dot still compiles and is right


def test_left_alone_when_scipy_linalg_is_already_loaded():
    got = _run("""
        import json
        import scipy.linalg
        from pipeline.eval import kernels  # noqa: F401
        import numba.np.arraymath as am
        print(json.dumps({"have_blas": am._HAVE_BLAS}))
    """)
    assert got["have_blas"] is True


def test_a_numba_without_that_module_still_imports_the_kernels():
    got = _run("""
        import importlib.abc, json, sys

        class NoArraymath(importlib.abc.MetaPathFinder):  # a numba whose modules are laid out otherwise
            def find_spec(self, name, path=None, target=None):
                if name == "numba.np.arraymath":
                    raise ModuleNotFoundError(name)
                return None

        sys.meta_path.insert(0, NoArraymath())
        from pipeline.eval import kernels  # noqa: F401
        print(json.dumps({"imported": True, "blas_hidden": "scipy.linalg.cython_blas" in sys.modules}))
    """)
    assert got == {"imported": True, "blas_hidden": False}


needs_simd = pytest.mark.skipif(not kernels.SIMD, reason="the CPU lacks AVX-512 VBMI2 (or CMIMH_SIMD=0)")


@njit
def _key_range(keys, j0):
    return kernels.block_key_range(keys, j0)


@njit
def _place(keys, j0, lo, hi, out, pos):
    kernels.place_block(keys, j0, lo, hi, out, pos)


@njit
def _bits(arr, j0):
    return kernels.nonzero_bits(arr, j0)


@njit
def _ap(bits, before, rank0, inv, acc):
    return kernels.ap_block(bits, before, rank0, inv, acc)


def test_available_follows_the_switch_and_the_cpu(monkeypatch):
    monkeypatch.setenv("CMIMH_SIMD", "0")
    assert kernels._available() is False
    monkeypatch.setenv("CMIMH_SIMD", "off")
    with pytest.raises(PipelineError, match="CMIMH_SIMD must be 0 .* or 1 .*, not 'off'"):
        kernels._available()
    monkeypatch.delenv("CMIMH_SIMD")
    monkeypatch.setattr(kernels.config, "DISABLE_JIT", True)
    assert kernels._available() is False  # the blocks cannot run as Python
    monkeypatch.setattr(kernels.config, "DISABLE_JIT", False)
    monkeypatch.setattr(kernels._ll, "get_host_cpu_features", lambda: {"avx512f": True, "avx512bw": True})
    assert kernels._available() is False  # no VBMI2: no one-instruction compress
    monkeypatch.setattr(kernels._ll, "get_host_cpu_features",
                        lambda: {"avx512f": True, "avx512bw": True, "avx512vbmi2": True})
    assert kernels._available() is (kernels._ll.llvm_version_info >= (19,) and kernels.config.CPU_NAME in (None, "host"))


@needs_simd
def test_key_range_and_nonzero_bits():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 130, 200).astype(np.uint8)
    for j0 in (0, 7, 136):
        block = a[j0:j0 + 64]
        assert _key_range(a, j0) == (int(block.min()) << 8) | int(block.max())
        want = sum(1 << t for t in range(64) if block[t])
        assert int(_bits(a, j0)) == want


@needs_simd
@pytest.mark.parametrize("lo,hi", [(0, 64), (10, 20), (15, 15)])
def test_place_block_packs_each_distance_in_block_order(lo, hi):
    rng = np.random.default_rng(1)
    keys = (2 * rng.binomial(64, 0.5, 64) + (rng.random(64) < 0.4)).astype(np.uint8)
    keys[:5] = [2 * 15, 2 * 15 + 1, 2 * 15, 2 * 12 + 1, 2 * 18]  # ties at 15, and 12, 18 for the small range
    nv = 65
    room = 64 + 64  # every item could be at one distance, plus the free 64 bytes
    guard = 7
    out = np.full(nv * room + 64, guard, np.uint8)
    pos = np.arange(nv, dtype=np.int64) * room
    _place(keys, 0, lo, hi, out, pos)
    for d in range(nv):
        mine = keys[(keys >> 1) == d] & 1
        if lo <= d <= hi:
            assert pos[d] - d * room == mine.size
            assert out[d * room:d * room + mine.size].tolist() == mine.tolist()  # database order kept
        else:
            assert pos[d] == d * room and (out[d * room:(d + 1) * room] == guard).all()  # untouched
    # nothing written past the 64 bytes after any bucket's items
    for d in range(lo, hi + 1):
        n = pos[d] - d * room
        assert (out[d * room + n + 64:(d + 1) * room] == guard).all()


@needs_simd
def test_place_block_appends_across_blocks():
    rng = np.random.default_rng(2)
    keys = (2 * rng.integers(3, 9, 256) + (rng.random(256) < 0.5)).astype(np.uint8)
    nv, room = 10, 256 + 64
    out = np.zeros(nv * room, np.uint8)
    pos = np.arange(nv, dtype=np.int64) * room
    for j0 in range(0, 256, 64):
        kr = int(_key_range(keys, j0))
        _place(keys, j0, kr >> 9, (kr & 255) >> 1, out, pos)
    for d in range(nv):
        mine = keys[(keys >> 1) == d] & 1
        assert out[d * room:d * room + mine.size].tolist() == mine.tolist() and pos[d] == d * room + mine.size


@needs_simd
@pytest.mark.parametrize("before,rank0", [(0, 0), (17, 100), (3, 5)])
def test_ap_block_adds_count_over_rank(before, rank0):
    rng = np.random.default_rng(rank0)
    bits = int(rng.integers(0, 2 ** 63)) | (1 << 63)
    inv = 1.0 / np.arange(1, rank0 + 64 + 1)
    acc = np.zeros(32)
    after = _ap(np.uint64(bits), before, rank0, inv, acc)
    m, want = before, 0.0
    for t in range(64):
        if bits >> t & 1:
            m += 1
            want += m / (rank0 + t + 1)
    assert after == m
    assert acc.sum() == pytest.approx(want, rel=1e-14)
    acc2 = acc.copy()
    assert _ap(np.uint64(0), after, rank0 + 64, np.concatenate([inv, np.ones(64)]), acc2) == after
    assert np.array_equal(acc2, acc)  # no relevant item: nothing added, whatever inv holds past the ranks


def _scalar(keys, nv, need_all, ap_ks, pk):
    r, ndb = keys.shape
    H = np.zeros((r, 2 * nv), np.int64)
    kernels.key_counts(keys, H)
    out = np.zeros(r), np.zeros((r, ap_ks.size)), np.zeros((r, pk.size), np.int64)
    inv = 1.0 / np.arange(1, ndb + 1)
    kernels.ranked_stats(keys, H, need_all, ap_ks, pk, np.empty((2, ndb), np.uint8), inv, np.empty(ndb), *out)
    return H, out


def _vector(keys, nv, need_all, ap_ks, pk, exact):
    r, ndb = keys.shape
    H = np.zeros((r, 2 * nv), np.int64)
    if exact:
        kernels.key_counts(keys, H)
    buf = np.full(ndb + 64 * nv if exact else nv * (ndb + 64), 99, np.uint8)  # garbage where not written
    out = np.zeros(r), np.zeros((r, ap_ks.size)), np.zeros((r, pk.size), np.int64)
    inv = 1.0 / np.arange(1, ndb + 64 + 1)
    kernels.ranked_stats_simd(keys, H, exact, need_all, ap_ks, pk, buf, inv, np.zeros(32), *out)
    return H, out


@needs_simd
@pytest.mark.parametrize("ndb", [1, 63, 64, 65, 200, 1000])
@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("need_all", [True, False])
def test_ranked_stats_simd_equals_the_scalar_kernel(ndb, exact, need_all):
    """Many ties (8 bits: 9 distances), rows with no relevant item and rows all relevant, cut-offs
    at and around 64-rank blocks' edges (several in one block, AP@k and P@K at the same k); the
    counts and P@K equal, AP@all and AP@k to float rounding (their additions go in another order)."""
    rng = np.random.default_rng(ndb)
    r, bits = 7, 8
    nv = bits + 1
    keys = (2 * rng.binomial(bits, 0.5, (r, ndb)) + (rng.random((r, ndb)) < 0.3)).astype(np.uint8)
    keys[1] &= 0xFE  # no relevant item
    keys[2] |= 1  # every item relevant
    keys[3] = 2 * 4 + (np.arange(ndb) % 2)  # one distance only
    ap_ks = np.array(sorted({min(k, ndb) for k in (1, 5, 50, 64, 65)}), np.int64)
    pk = np.array(sorted({min(k, ndb) for k in (1, 10, 63, 64, 100, 128, 500, ndb)}), np.int64)
    H0, (all0, apk0, hits0) = _scalar(keys, nv, need_all, ap_ks, pk)
    H1, (all1, apk1, hits1) = _vector(keys, nv, need_all, ap_ks, pk, exact)
    assert np.array_equal(H1, H0)
    assert np.array_equal(hits1, hits0)
    np.testing.assert_allclose(apk1, apk0, rtol=1e-13, atol=0)
    np.testing.assert_allclose(all1, all0, rtol=1e-13, atol=0)
    assert all1[1] == 0.0 and (not need_all or all1[2] == 1.0)


@needs_simd
def test_rank_metrics_same_with_and_without_the_vector_kernel(monkeypatch):
    """The whole call: the vector kernel (both bucket layouts) against the scalar one, 64-bit codes
    with ties, P@K, AP@k, AP@all and the PR counts."""
    from pipeline.eval import hamming, metrics

    rng = np.random.default_rng(5)
    nq, ndb = 40, 3001
    q, db = rng.integers(0, 256, (nq, 8), dtype=np.uint8), rng.integers(0, 256, (ndb, 8), dtype=np.uint8)
    db[1000:1100] = db[0]  # exact ties
    ql, dl = rng.random((nq, 6)) < 0.3, rng.random((ndb, 6)) < 0.3
    monkeypatch.setattr(hamming, "ENGINE", "compiled")
    kw = dict(map_ks=[None, 50, 1000], pk=[1, 100, 2000], pr_bits=64, n_threads=2)
    monkeypatch.setattr(kernels, "SIMD", False)
    ref = metrics.rank_metrics(q, db, ql, dl, **kw)
    monkeypatch.setattr(kernels, "SIMD", True)
    counted = []
    key_counts = kernels.key_counts
    monkeypatch.setattr(kernels, "key_counts", lambda *a: (counted.append(1), key_counts(*a)))
    room = 65 * (ndb + 64)
    for bucket_bytes, memory, exact in ((room, 8 * room, False), (room - 1, 8 * room, True), (room, 8 * room - 1, True)):
        # room for every item (no counting pass), then laid end to end after one (a thread's buckets
        # too big for _SIMD_BUCKET_BYTES / the two threads' too big for a quarter of the budget)
        monkeypatch.setattr(metrics, "_SIMD_BUCKET_BYTES", bucket_bytes)
        counted.clear()
        got = metrics.rank_metrics(q, db, ql, dl, **kw, memory_budget=memory)
        assert bool(counted) == exact
        assert np.array_equal(got["hits"], ref["hits"])
        for k in ref["ap"]:
            np.testing.assert_allclose(got["ap"][k], ref["ap"][k], rtol=1e-13, atol=0)
        for k in ref["pr"]:
            np.testing.assert_array_equal(got["pr"][k], ref["pr"][k])


def test_pair_ranks_words_across_database_blocks():
    """The own pair's rank (items closer, or as close with a smaller row) when the database spans
    several blocks and the pair sits at a block's edges; against a NumPy count."""
    rng = np.random.default_rng(9)
    B = kernels.BLOCK
    ndb = 2 * B + 37
    db0 = rng.integers(0, 2 ** 12, ndb, dtype=np.uint64)  # 12 bits: many ties
    pair = np.array([0, B - 1, B, B + 1, 2 * B, ndb - 1, 777, -1, 5000], np.int64)
    qw = rng.integers(0, 2 ** 12, (pair.size, 1), dtype=np.uint64)
    out = np.zeros(pair.size, np.int64)
    kernels.pair_ranks_words(qw, db0, pair, out)
    d = np.array([[bin(int(a) ^ int(b)).count("1") for b in db0] for a in qw[:, 0]])
    for i, p in enumerate(pair):
        if p < 0:
            assert out[i] == -1
            continue
        rows = np.arange(ndb)
        want = int(((d[i] < d[i, p]) | ((d[i] == d[i, p]) & (rows < p))).sum())
        assert out[i] == want, (i, p)


@needs_simd
@pytest.mark.parametrize("ndb", [1, 64, 200, 2 * kernels.BLOCK + 70])
def test_keys_simd_equals_keys(ndb):
    """Keys of one-word codes from the 512-bit blocks equal the scalar kernel's, across database
    blocks and with a tail of fewer than 64 items."""
    rng = np.random.default_rng(ndb)
    r = 5
    qw = rng.integers(0, 2 ** 63, (r, 1), dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # all 64 bits used
    db = rng.integers(0, 2 ** 63, (1, ndb), dtype=np.uint64) * np.uint64(2)
    rel = (rng.random((r, ndb)) < 0.5).astype(np.uint8)
    want, got = np.empty((r, ndb), np.uint8), np.empty((r, ndb), np.uint8)
    kernels.keys(qw, db, rel, want)
    kernels.keys_simd(qw, db[0], rel, got)
    assert np.array_equal(got, want)
    d = np.array([[bin(int(a) ^ int(b)).count("1") for b in db[0]] for a in qw[:, 0]])
    assert np.array_equal(want, 2 * d + rel)


@needs_simd
@pytest.mark.parametrize("ndb,nl", [(1, 1), (64, 2), (200, 3), (2 * kernels.BLOCK + 70, 2)])
def test_relevance_simd_equals_relevance(ndb, nl):
    """Shares-a-label bytes from the 512-bit blocks equal the scalar kernel's and a NumPy test,
    across database blocks, with a tail, for 1 to 3 label words, a query with no label too."""
    rng = np.random.default_rng(ndb + nl)
    r = 6

    def sparse(shape):  # about one bit in eight set
        return (rng.integers(0, 2 ** 63, shape, dtype=np.uint64) & rng.integers(0, 2 ** 63, shape, dtype=np.uint64)
                & rng.integers(0, 2 ** 63, shape, dtype=np.uint64))

    qlw, dblT = sparse((r, nl)) >> np.uint64(40), sparse((nl, ndb)) >> np.uint64(40)  # ~3 bits a word: some miss
    qlw[0] = 0
    want, got = np.empty((r, ndb), np.uint8), np.full((r, ndb), 7, np.uint8)
    kernels.relevance(qlw, dblT, want)
    kernels.relevance_simd(qlw, dblT, got)
    assert np.array_equal(got, want)
    assert np.array_equal(want, ((qlw[:, :, None] & dblT[None, :, :]) != 0).any(axis=1))
    assert not want[0].any() and (ndb < 64 or 0 < want.mean() < 1)
