"""Compiled (numba) kernels of the ranking: per-distance counting instead of sorting.

A Hamming distance takes only ``bits + 1`` values, so a ranking "by distance, ties by ascending
database index" is a counting sort: one pass counts the items (and the relevant items) at each
distance, the prefix sums give where each distance's bucket starts, and a second pass in database
order hands out ranks inside each bucket. Every kernel here is O(n_db) per query, exact, with no
comparison sort, and releases the GIL (the callers run query chunks on threads).

Codes and labels come as (n, words) ``uint64`` rows (:func:`pipeline.eval.words.words64`). The first pass walks the
database in blocks of :data:`BLOCK` items, each block against all the rows of the chunk, so the
database is read from memory once per chunk rather than once per query.

Kernels are compiled on first use and cached on disk (numba ``cache=True``: ``__pycache__`` beside
this file, or the user's cache folder when that is read-only), so only the first run on a machine
pays the compilation (seconds). Importing numba and loading the cached kernels still costs about a
second per process, so small problems take the NumPy twins of :mod:`pipeline.eval.numpy_kernels`
instead (:func:`pipeline.eval.hamming.compiled_engine` decides).
"""

from __future__ import annotations

import sys

import numpy as np


def _import_numba_math_without_blas_probe() -> None:
    """Import numba's ``numba.np.arraymath`` with SciPy's BLAS hidden, unless either is loaded.

    Why: numba loads that module when it first compiles or loads a cached kernel, and the module
    checks at import whether SciPy's BLAS is there by importing ``scipy.linalg`` (about 0.25 s of
    every ``cmimh evaluate``: 0.97 -> 0.71 s from start to the first kernel's result, measured).
    What the check decides: whether numba's ``np.correlate`` and ``np.convolve`` of floats call
    SciPy's BLAS or a plain loop; these kernels call neither. The rest of numba's linear algebra
    (``np.dot``, ``np.linalg``) looks for the BLAS when a kernel using it compiles, and finds it:
    the hidden entry is removed at once."""
    blas = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules or blas in sys.modules:
        return
    sys.modules[blas] = None  # type: ignore[assignment]  # "import scipy.linalg.cython_blas" fails
    try:
        import numba.np.arraymath  # noqa: F401
    except ImportError:  # a numba laid out otherwise: it loads what it needs itself, probe and all
        pass
    finally:
        del sys.modules[blas]


_import_numba_math_without_blas_probe()

from numba import njit  # noqa: E402
from numba.core import types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

#: Database items per block of :func:`distances` (a block's code words stay in L1).
BLOCK = 4096

_JIT = {"nogil": True, "cache": True, "boundscheck": False}


@intrinsic
def _popcnt(typingctx, x):
    """The CPU's popcount of a uint64 (LLVM ``ctpop``), typed int64 (numba widens int64 + uint64 to
    float64, so distances stay signed)."""
    if not (isinstance(x, types.Integer) and x.bitwidth == 64 and not x.signed):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(types.uint64), codegen


@intrinsic
def _cttz(typingctx, x):
    """Trailing zero bits of a non-zero uint64 (LLVM ``cttz``), typed int64."""
    if not (isinstance(x, types.Integer) and x.bitwidth == 64 and not x.signed):
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.int64(types.uint64), codegen


@intrinsic
def _half(typingctx, x):
    """``x >> 1`` for an unsigned integer as one LLVM ``lshr``: numba's ``>>`` guards shift counts
    past the width (Python semantics), which made the hot loops below ~3x slower."""
    if not (isinstance(x, types.Integer) and not x.signed):
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        return builder.lshr(args[0], ir.Constant(args[0].type, 1))

    return x(x), codegen


# ----------------------------------------------------------------------------- metrics

@njit(**_JIT)
def relevance(qlw, dblT, rel):  # pragma: no cover - compiled
    """``rel[i, j] = 1`` when query i and database item j share a label: label words ``qlw``
    (rows, nl) against ``dblT`` (nl, ndb), one word at a time (vectorised)."""
    r, nl = qlw.shape
    ndb = dblT.shape[1]
    for i in range(r):
        ri = rel[i]
        a = qlw[i, 0]
        d0 = dblT[0]
        for j in range(ndb):
            ri[j] = (a & d0[j]) != 0
        for w in range(1, nl):
            a = qlw[i, w]
            dw = dblT[w]
            for j in range(ndb):
                ri[j] |= (a & dw[j]) != 0


@njit(**_JIT)
def distances(qw, dbT, out):  # pragma: no cover - compiled
    """Hamming distances of code words ``qw`` (rows, nw) to ``dbT`` (nw, ndb) into ``out`` (rows,
    ndb) uint8/uint16: the database in blocks of :data:`BLOCK` items, each against every row (so it
    is read from memory once per call), one word at a time. (Loops run over slices from 0: LLVM
    vectorises those, not ``range(j0, j1)``.)"""
    r, nw = qw.shape
    ndb = dbT.shape[1]
    for j0 in range(0, ndb, BLOCK):
        j1 = min(ndb, j0 + BLOCK)
        n = j1 - j0
        for i in range(r):
            oi = out[i, j0:j1]
            a = qw[i, 0]
            dw = dbT[0, j0:j1]
            for j in range(n):
                oi[j] = _popcnt(a ^ dw[j])
            for w in range(1, nw):
                a = qw[i, w]
                dw = dbT[w, j0:j1]
                for j in range(n):
                    oi[j] += _popcnt(a ^ dw[j])


@njit(**_JIT)
def keys(qw, dbT, rel, out):  # pragma: no cover - compiled
    """``out[i, j] = 2 * distance + rel[i, j]``: the key of the counting below (as :func:`distances`)."""
    r, nw = qw.shape
    ndb = dbT.shape[1]
    for j0 in range(0, ndb, BLOCK):
        j1 = min(ndb, j0 + BLOCK)
        n = j1 - j0
        for i in range(r):
            oi = out[i, j0:j1]
            ri = rel[i, j0:j1]
            a = qw[i, 0]
            dw = dbT[0, j0:j1]
            if nw == 1:
                for j in range(n):
                    oi[j] = 2 * _popcnt(a ^ dw[j]) + ri[j]
                continue
            for j in range(n):
                oi[j] = _popcnt(a ^ dw[j])
            for w in range(1, nw):
                a = qw[i, w]
                dw = dbT[w, j0:j1]
                for j in range(n):
                    oi[j] += _popcnt(a ^ dw[j])
            for j in range(n):
                oi[j] = 2 * oi[j] + ri[j]


@njit(**_JIT)
def key_counts(keys, H):  # pragma: no cover - compiled
    """``H[i, key] += 1`` per item: per distance d, ``H[i, 2d]`` irrelevant and ``H[i, 2d + 1]``
    relevant items."""
    r, ndb = keys.shape
    for i in range(r):
        ki = keys[i]
        Hi = H[i]
        for j in range(ndb):
            Hi[ki[j]] += 1


@njit(nogil=True, cache=True, boundscheck=False, fastmath={"reassoc"})
def _weighted_sum(w, n):  # pragma: no cover - compiled
    """sum over m < n of (m + 1) * w[m] (vectorised: the order of the additions is the compiler's,
    fixed for a build)."""
    acc = 0.0
    for m in range(n):
        acc += (m + 1.0) * w[m]
    return acc


@njit(**_JIT, inline="always")
def _head_stats(ranked, inv, ap_ks, pk, ap_row, hits_row):  # pragma: no cover - compiled
    """AP@k (k of ``ap_ks``) and relevant counts within the top K (K of ``pk``) from the ranked
    relevance ``ranked``; both lists ascending. Branch-free between the cut-offs (relevance is a
    coin flip to the branch predictor): the m-th relevant item at rank p adds m * inv[p - 1]."""
    na, npk = ap_ks.size, pk.size
    h = 0
    acc = 0.0
    p = 0
    a = 0
    b = 0
    while a < na or b < npk:
        nxt = ap_ks[a] if a < na else pk[b]
        if b < npk and pk[b] < nxt:
            nxt = pk[b]
        for q in range(p, nxt):
            rr = ranked[q]
            h += rr
            acc += (rr * h) * inv[q]
        p = nxt
        while a < na and ap_ks[a] == p:
            ap_row[a] = acc / h if h > 0 else 0.0
            a += 1
        while b < npk and pk[b] == p:
            hits_row[b] = h
            b += 1


@njit(**_JIT, inline="always")
def _bucket_starts(Hi, pos, kmax):  # pragma: no cover - compiled
    """``pos[d]`` = the rank (0-based) where distance d's bucket starts, from the key counts ``Hi``
    of one row; returns the last bucket holding a rank below ``kmax``."""
    nv = pos.size
    s = 0
    dmax = nv - 1
    found = False
    for d in range(nv):
        pos[d] = s
        s += Hi[2 * d] + Hi[2 * d + 1]
        if s >= kmax and not found:
            dmax = d  # ranks 1..kmax lie in the buckets 0..dmax
            found = True
    return dmax


@njit(**_JIT, inline="always")
def _ap_all(ranked, inv, w):  # pragma: no cover - compiled
    """AP over the whole ranked relevance: the m-th relevant item at rank p adds m / p. Gather 1/p
    of the relevant ranks (branch-free: relevance is a coin flip to the branch predictor), then one
    vector sum."""
    n = 0
    for p in range(ranked.size):
        w[n] = inv[p]
        n += ranked[p]
    return _weighted_sum(w, n) / n if n > 0 else 0.0


@njit(**_JIT, inline="always")
def _place(key, pos, ranked, one):  # pragma: no cover - compiled
    """One step of the counting sort: the item's relevance (the key's low bit) at the next rank of
    its distance's bucket."""
    d = _half(key)
    p = pos[d]
    ranked[p] = key & 1
    pos[d] = p + one


@njit(**_JIT)
def ranked_stats(keys, H, need_all, ap_ks, pk, ranked, inv, w, ap_all, ap_k, hits):  # pragma: no cover - compiled
    """Per row i, from its keys (database order) and key counts ``H[i]``: the ranked relevance by
    a counting sort (buckets by distance, database order inside), then AP@all (``need_all``),
    AP@k for each k of ``ap_ks`` and the relevant items within the top K for each K of ``pk``
    (both ascending, at most ndb).

    ``ranked`` (2, ndb) uint8 and ``w`` (ndb,) float64 are scratch, ``inv[p] = 1 / (p + 1)``.
    With ``need_all`` rows go in pairs through one loop over the database: the two rows' bucket
    counters are independent, so the CPU overlaps their store-to-load chains (measured 1.3x
    faster than a row at a time). Without ``need_all`` only ranks up to max(ap_ks, pk) are placed,
    and items in the buckets past that rank are skipped.
    """
    r, ndb = keys.shape
    nv = H.shape[1] // 2
    kmax = 0
    if ap_ks.size:
        kmax = max(kmax, ap_ks[-1])
    if pk.size:
        kmax = max(kmax, pk[-1])
    pa = np.empty(nv, np.uint32)
    pb = np.empty(nv, np.uint32)
    ra = ranked[0]
    rb = ranked[1]
    one = np.uint32(1)
    i = 0
    if need_all:
        while i + 1 < r:
            _bucket_starts(H[i], pa, kmax)
            _bucket_starts(H[i + 1], pb, kmax)
            ka = keys[i]
            kb = keys[i + 1]
            for j in range(ndb):
                _place(ka[j], pa, ra, one)
                _place(kb[j], pb, rb, one)
            ap_all[i] = _ap_all(ra, inv, w)
            _head_stats(ra, inv, ap_ks, pk, ap_k[i], hits[i])
            ap_all[i + 1] = _ap_all(rb, inv, w)
            _head_stats(rb, inv, ap_ks, pk, ap_k[i + 1], hits[i + 1])
            i += 2
    for i in range(i, r):  # the odd row out, or every row of the head-only case
        dmax = _bucket_starts(H[i], pa, kmax)
        ki = keys[i]
        if need_all:
            for j in range(ndb):
                _place(ki[j], pa, ra, one)
            ap_all[i] = _ap_all(ra, inv, w)
        else:
            kmax_key = 2 * dmax + 1  # d <= dmax, compared on the key itself
            for j in range(ndb):
                key = ki[j]
                if key <= kmax_key:
                    d = _half(key)
                    p = pa[d]
                    if p < kmax:
                        ra[p] = key & 1
                    pa[d] = p + one
        _head_stats(ra, inv, ap_ks, pk, ap_k[i], hits[i])


@njit(**_JIT)
def head_stats(idx, qlw, dblw, ap_ks, pk, ranked, inv, ap_k, hits):  # pragma: no cover - compiled
    """AP@k and top-K relevant counts (as :func:`ranked_stats`) of rows whose ranking head is
    ``idx`` (rows, kmax) database rows; relevance from label words ``qlw`` (rows, nl) and ``dblw``
    (ndb, nl). ``ranked`` is (kmax,) uint8 scratch, ``inv[p] = 1 / (p + 1)``."""
    r, kmax = idx.shape
    nl = qlw.shape[1]
    for i in range(r):
        for p in range(kmax):
            j = idx[i, p]
            hit = np.uint64(0)
            for w in range(nl):
                hit |= qlw[i, w] & dblw[j, w]
            ranked[p] = hit != 0
        _head_stats(ranked, inv, ap_ks, pk, ap_k[i], hits[i])


# ----------------------------------------------------------------------------- ranking

#: Database items sampled per row to guess the top-k distance threshold.
SAMPLE = 4096


_HI = np.uint64(0x8080808080808080)
_ONES = np.uint64(0x0101010101010101)


@njit(**_JIT, inline="always")
def _le_mask(x, t1):  # pragma: no cover - compiled
    """High bit of each byte of ``x`` (bytes < 128) set where the byte is < t1 (t1 <= 128 bytes
    of ``t1 * 0x01..``): ``(x | 0x80..) - t1`` keeps a byte's high bit exactly when byte >= t1,
    with no borrow between bytes."""
    return ~((x | _HI) - t1) & _HI


@njit(**_JIT)
def _count_le(di, ndb, t, swar):  # pragma: no cover - compiled
    """Items of ``di[:ndb]`` at distance <= t."""
    c = 0
    nw = ndb // 8 if swar else 0
    if swar:
        words = di.view(np.uint64)
        t1 = np.uint64(t + 1) * _ONES
        for w in range(nw):
            c += _popcnt(_le_mask(words[w], t1))
    for j in range(8 * nw, ndb):
        c += di[j] <= t
    return c


@njit(**_JIT)
def _collect_le(di, ndb, t, swar, cand):  # pragma: no cover - compiled
    """Database rows of ``di[:ndb]`` at distance <= t, ascending, into ``cand``; their number."""
    n = 0
    nw = ndb // 8 if swar else 0
    if swar:
        words = di.view(np.uint64)
        t1 = np.uint64(t + 1) * _ONES
        for w in range(nw):
            mw = _le_mask(words[w], t1)
            while mw:
                cand[n] = 8 * w + _cttz(mw) // 8
                n += 1
                mw &= mw - np.uint64(1)
    for j in range(8 * nw, ndb):
        if di[j] <= t:
            cand[n] = j
            n += 1
    return n


@njit(**_JIT)
def topk_from_distances(dist, ndb, nv, k, idx_out, dist_out, cand):  # pragma: no cover - compiled
    """Top ``k`` (1 <= k <= ndb) of each row of ``dist[:, :ndb]`` by (distance, index) into
    ``idx_out``/``dist_out`` (rows, k); ``dist`` is uint8 or uint16 with rows of a multiple of 8
    items, ``cand`` (ndb,) int64 scratch.

    A strided sample of :data:`SAMPLE` items guesses a distance t holding at least k items (with a
    4-sigma margin); one counting pass checks it (raised until it holds), one pass collects the
    items at distance <= t in database order, and a counting sort of those by distance (stable)
    gives the exact top k. With one-byte distances below 128 both passes test 8 items per 64-bit
    word (SWAR), so the cost per item is a fraction of a nanosecond.
    """
    r = dist.shape[0]
    stride = max(1, ndb // SAMPLE)
    m = (ndb + stride - 1) // stride
    e = k * m / ndb
    target = min(m, int(np.ceil(e + 4.0 * np.sqrt(e) + 4.0)))
    hist = np.empty(nv, np.int64)
    pos = np.empty(nv, np.int64)
    swar = nv <= 128 and dist.shape[1] % 8 == 0  # one-byte distances (the callers' dtype) below 128
    for i in range(r):
        di = dist[i]
        hist[:] = 0
        for j in range(0, ndb, stride):
            hist[di[j]] += 1
        t = 0
        acc = 0
        for d in range(nv):
            acc += hist[d]
            t = d
            if acc >= target:
                break
        while t < nv - 1 and _count_le(di, ndb, t, swar) < k:  # the sample can underestimate
            t += 1
        n = _collect_le(di, ndb, t, swar, cand)
        hist[:] = 0
        for u in range(n):
            hist[di[cand[u]]] += 1
        s = 0
        for d in range(nv):
            pos[d] = s
            s += hist[d]
        oi = idx_out[i]
        od = dist_out[i]
        for u in range(n):
            j = cand[u]
            d = di[j]
            p = pos[d]
            pos[d] = p + 1
            if p < k:
                oi[p] = j
                od[p] = d


@njit(**_JIT)
def pair_ranks_words(qw, db0, pair, out):  # pragma: no cover - compiled
    """:func:`pair_ranks` of codes of one 64-bit word (up to 64 bits), from the codes: query words
    ``qw`` (rows, 1) against the database words ``db0`` (ndb,), each distance computed and compared
    in one vectorised pass, none stored (measured 2.1x faster than distances then
    :func:`pair_ranks` at 64 bits: 0.24 against 0.50 ns a pair, one thread)."""
    r = qw.shape[0]
    for i in range(r):
        p = pair[i]
        if p < 0:
            out[i] = -1
            continue
        a = qw[i, 0]
        dp = _popcnt(a ^ db0[p])
        c = 0
        head = db0[:p]
        for j in range(head.size):
            c += _popcnt(a ^ head[j]) <= dp
        tail = db0[p + 1:]
        for j in range(tail.size):
            c += _popcnt(a ^ tail[j]) < dp
        out[i] = c


@njit(**_JIT)
def pair_ranks(dist, pair, out):  # pragma: no cover - compiled
    """0-based rank of database row ``pair[i]`` in row i of ``dist`` (the items before it: closer,
    or as close with a smaller index); -1 where ``pair[i] < 0``."""
    r, ndb = dist.shape
    for i in range(r):
        pi = pair[i]
        if pi < 0:
            out[i] = -1
            continue
        di = dist[i]
        dp = di[pi]
        c = 0
        head = di[:pi]
        for j in range(head.size):
            c += head[j] <= dp
        tail = di[pi + 1:]
        for j in range(tail.size):
            c += tail[j] < dp
        out[i] = c
