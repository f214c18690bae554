"""Today's (before counting) evaluation, kept verbatim as the reference of the tests and benchmarks:
``pipeline/eval/hamming.py`` and ``pipeline/eval/metrics.py`` as of commit 9e0aef7 (sort-based full
ranking, sampled-threshold top-k). The package's counting implementation must give the same numbers.
Not part of the package; nothing here is imported by it.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from pipeline.errors import PipelineError

#: Default working-memory budget (bytes) for one ranking call; chunks are sized from it.
DEFAULT_MEMORY_BUDGET = 1 << 30
#: Worst-case bytes per (query, database item) pair held by one top-k chunk (all tied).
_TOPK_BYTES_PER_PAIR = 48
#: XOR scratch (elements) per block: ~512 KiB of words, so it stays in L2 while counted.
_XOR_ELEMS = 1 << 16
#: Database columns sampled per query to estimate the top-k distance threshold.
_SAMPLE = 4096
#: Distances per top-k chunk (~2 MiB): larger chunks fall out of cache (measured: 8-16 rows
#: of a 117k database are 15-30% faster than 64-256).
_CHUNK_ELEMS = 1 << 21

#: Widest key packed into uint32 (tests lower it to exercise the uint64 path).
_KEY32_BITS = 32

HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Set bits per element (``np.bitwise_count`` on NumPy >= 2, else a byte lookup table)."""
    if HAS_BITWISE_COUNT:
        return np.bitwise_count(x, out=out)
    return _popcount_lut(x, out)


def _popcount_lut(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Lookup-table popcount (fallback for NumPy < 2)."""
    b = np.ascontiguousarray(x).view(np.uint8).reshape(x.shape + (x.dtype.itemsize,))
    r = _POP8[b].sum(axis=-1, dtype=np.uint8)  # <= 64 set bits per word
    if out is None:
        return r
    out[...] = r
    return out


def to_words(packed: np.ndarray) -> np.ndarray:
    """View (n, width) packed uint8 codes as (n, n_words) unsigned words for fast XOR.

    Widths of 1, 2 or 4 bytes map to one uint8/16/32 word; others are zero-padded to a
    multiple of 8 bytes and viewed as uint64 (zero padding adds nothing to a distance).
    """
    p = np.asarray(packed)
    if p.ndim != 2 or p.dtype != np.uint8:
        raise PipelineError(f"packed codes must be a 2-D uint8 array, got {p.dtype} {p.shape}")
    p = np.ascontiguousarray(p)
    w = p.shape[1]
    if w in (1, 2, 4):
        return p.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[w])
    if w % 8:
        p = np.pad(p, ((0, 0), (0, 8 - w % 8)))
    return p.view(np.uint64)


class Scratch:
    """Reusable named buffers (one per thread): avoids re-faulting fresh pages every chunk."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        dt = np.dtype(dtype)
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dt or buf.size < n:
            buf = self._bufs[name] = np.empty(max(n, 1), dtype=dt)
        return buf[:n].reshape(shape)

    def arange(self, n: int, dtype: np.dtype | type) -> np.ndarray:
        """Cached ``np.arange(n, dtype=dtype)``."""
        key = f"arange-{np.dtype(dtype).str}"
        a = self._bufs.get(key)
        if a is None or a.size != n:
            a = self._bufs[key] = np.arange(n, dtype=dtype)
        return a


class Prepared:
    """Query and database codes as words, plus the distance range; shared by ranking and metrics."""

    def __init__(self, q_packed: np.ndarray, db_packed: np.ndarray) -> None:
        q, db = np.asarray(q_packed), np.asarray(db_packed)
        if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
            raise PipelineError(f"query and database codes differ in shape: {q.shape} vs {db.shape}")
        self.width = int(q.shape[1])
        self.qw = to_words(q)
        self.dbT = np.ascontiguousarray(to_words(db).T)  # (n_words, ndb): one row per word
        self.nq, self.ndb = int(q.shape[0]), int(db.shape[0])
        self.ndb_pad = -(-self.ndb // 8) * 8
        self.n_values = 8 * self.width + 1  # distances lie in 0..8*width
        self.dist_dtype = np.dtype(np.uint8 if self.n_values <= 256 else np.uint16)

    def distances(self, start: int, stop: int, scratch: Scratch, name: str = "d") -> np.ndarray:
        """Distances of queries start..stop-1 in a reused (rows, ndb_pad) buffer.

        Rows are padded to a multiple of 8 columns (padding content undefined; use
        ``[:, :ndb]``) so that row masks can be scanned as 64-bit words.
        """
        full = scratch.get(name, (stop - start, self.ndb_pad), self.dist_dtype)
        distance_block(self.qw[start:stop], self.dbT, full[:, : self.ndb], scratch)
        return full


def distance_block(qw: np.ndarray, dbT: np.ndarray, out: np.ndarray, scratch: Scratch) -> np.ndarray:
    """Hamming distances of query words ``qw`` (r, nw) to ``dbT`` (nw, ndb), written into ``out``."""
    r, ndb = out.shape
    nw = dbT.shape[0]
    sub = max(1, min(r, _XOR_ELEMS // max(ndb, 1)))
    x = scratch.get("xor", (sub, ndb), dbT.dtype)
    c = scratch.get("cnt", (sub, ndb), out.dtype) if nw > 1 else None
    for s in range(0, r, sub):
        e = min(r, s + sub)
        xs, o = x[: e - s], out[s:e]
        for w in range(nw):
            np.bitwise_xor(qw[s:e, w, None], dbT[w][None, :], out=xs)
            if w == 0:
                popcount(xs, out=o)
            else:
                cs = c[: e - s]
                popcount(xs, out=cs)
                np.add(o, cs, out=o)
    return out


def hamming_distances(q_packed: np.ndarray, db_packed: np.ndarray) -> np.ndarray:
    """All (nq, ndb) Hamming distances as uint16 (for small sets; ranking never needs this)."""
    p = Prepared(q_packed, db_packed)
    out = np.empty((p.nq, p.ndb), dtype=np.uint16)
    distance_block(p.qw, p.dbT, out, Scratch())
    return out


def run_chunks(n: int, rows: int, n_threads: int, fn: Callable[[int, int, Scratch], None]) -> None:
    """Call ``fn(start, stop, scratch)`` over row chunks, on ``n_threads`` threads.

    NumPy releases the GIL in ufuncs and sorts, the bulk of the work; each thread keeps its own
    scratch buffers and writes a disjoint slice of the outputs.
    """
    rows = max(1, int(rows))
    bounds = [(s, min(n, s + rows)) for s in range(0, n, rows)]
    if n_threads <= 1 or len(bounds) <= 1:
        sc = Scratch()
        for s, e in bounds:
            fn(s, e, sc)
        return
    local = threading.local()

    def work(b: tuple[int, int]) -> None:
        sc = getattr(local, "scratch", None)
        if sc is None:
            sc = local.scratch = Scratch()
        fn(b[0], b[1], sc)

    with ThreadPoolExecutor(max_workers=min(n_threads, len(bounds))) as ex:
        for _ in ex.map(work, bounds):
            pass


def chunk_rows(ndb: int, bytes_per_pair: int, memory_budget: int, n_threads: int, cap: int) -> int:
    """Query rows per chunk (at most ``cap``) so all threads' chunks fit ``memory_budget`` bytes."""
    per_thread = max(1, memory_budget // max(1, n_threads))
    return int(max(1, min(cap, per_thread // max(1, bytes_per_pair * ndb))))


def key_dtype(nbits: int) -> np.dtype:
    """uint32 sort keys when ``nbits`` fit (half the memory traffic of uint64), else uint64."""
    return np.dtype(np.uint32 if nbits <= _KEY32_BITS else np.uint64)


def sorted_keys(d: np.ndarray, n_values: int, scratch: Scratch) -> tuple[np.ndarray, int]:
    """Full stable ranking of each row of ``d``: sorted keys ``distance << jbits | index``.

    Packing the index into the key makes an ordinary (SIMD quick-)sort stable by construction,
    several times faster than ``argsort(kind='stable')`` on this data.
    """
    r, ndb = d.shape
    jbits = max(1, int(ndb - 1).bit_length())
    dbits = int(n_values - 1).bit_length()
    kdt = key_dtype(jbits + dbits)
    keys = scratch.get("keys", (r, ndb), kdt)
    np.left_shift(d, jbits, out=keys, dtype=kdt)
    np.bitwise_or(keys, scratch.arange(ndb, kdt)[None, :], out=keys)
    keys.sort(axis=1)
    return keys, jbits


def _thresholds(d: np.ndarray, kk: int, n_values: int) -> np.ndarray:
    """Per row, a distance t with (very likely) at least ``kk`` items at distance <= t.

    Exact from the full histogram when the database is small; otherwise from a strided sample
    of ~4,096 columns with a 4-sigma margin. Callers check the count and repair misses.
    """
    r, ndb = d.shape
    stride = max(1, ndb // _SAMPLE)
    if stride == 1:
        sample, target = d, kk
    else:
        sample = d[:, ::stride]
        e = kk * sample.shape[1] / ndb
        target = math.ceil(e + 4.0 * math.sqrt(e) + 4.0)
    m = sample.shape[1]
    if target > m:
        return np.full(r, n_values - 1, dtype=np.int64)
    key = sample.astype(np.intp)
    key += (np.arange(r, dtype=np.intp) * n_values)[:, None]
    hist = np.bincount(key.ravel(), minlength=r * n_values).reshape(r, n_values)
    cum = np.cumsum(hist, axis=1)
    return (cum < target).sum(axis=1)  # first distance whose cumulative count reaches target


def _row_candidates(full: np.ndarray, ndb: int, t: np.ndarray, scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions in ``full`` of ``d <= t`` (row-major: by row, then ascending index) and
    the count per row.

    The mask is scanned as 64-bit words first: with ~2% of items kept most words are zero, so
    the byte-level scan touches ~1/6 of the data (~4x faster than ``flatnonzero`` on the mask).
    """
    r, ndb_pad = full.shape
    mbuf = scratch.get("mask", (r, ndb_pad), np.bool_)
    np.less_equal(full[:, :ndb], t.astype(full.dtype)[:, None], out=mbuf[:, :ndb])
    mbuf[:, ndb:] = False
    words = mbuf.reshape(-1).view(np.uint64)
    wmask = scratch.get("wmask", words.shape, np.bool_)
    np.not_equal(words, 0, out=wmask)
    # flatnonzero is branch-free (fast) on bool arrays only; hence the bool detours.
    wnz = np.flatnonzero(wmask)
    local = np.flatnonzero(words[wnz].view(np.bool_))
    pos = wnz[local >> 3]
    pos <<= 3
    pos += local & 7
    ends = np.searchsorted(pos, np.arange(1, r + 1, dtype=np.int64) * ndb_pad)
    return pos, np.diff(ends, prepend=0)


def select_topk(full: np.ndarray, ndb: int, kk: int, n_values: int,
                scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """Stable top-``kk`` per row of distances ``full[:, :ndb]``: (indices int64, distances uint16).

    ``full`` is a contiguous (r, ndb_pad) buffer, ndb_pad a multiple of 8
    (:meth:`Prepared.distances`).
    """
    r, ndb_pad = full.shape
    d = full[:, :ndb]
    if kk >= ndb:
        keys, jbits = sorted_keys(d, n_values, scratch)
        idx = (keys & keys.dtype.type((1 << jbits) - 1)).astype(np.int64)
        return idx, (keys >> keys.dtype.type(jbits)).astype(np.uint16)
    t = _thresholds(d, kk, n_values)
    for _ in (0, 1):
        pos, counts = _row_candidates(full, ndb, t, scratch)
        short = counts < kk
        if not short.any():
            break
        # The sample underestimated these rows: use their exact kk-th smallest distance.
        t[short] = np.partition(d[short], kk - 1, axis=1)[:, kk - 1]
    rows = np.arange(r, dtype=np.int64)
    col = pos - np.repeat(rows * ndb_pad, counts)
    dc = full.reshape(-1)[pos]
    # Candidates are already ordered by (row, index): a stable sort on (row, distance) yields
    # (row, distance, index). NumPy radix-sorts keys of 16 bits or fewer.
    kdt = np.uint16 if r * n_values <= 1 << 16 else np.uint32
    key = np.repeat((rows * n_values).astype(kdt), counts)
    key += dc
    order = np.argsort(key, kind="stable")
    starts = np.cumsum(counts) - counts
    sel = order[starts[:, None] + np.arange(kk)]
    return col[sel], dc[sel].astype(np.uint16)


def topk(q_packed: np.ndarray, db_packed: np.ndarray, k: int, chunk_size: int | None = None, *,
         n_threads: int = 1, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k database rows per query by Hamming distance, ties by ascending index.

    Returns ``(indices int64 (nq, k'), distances uint16 (nq, k'))`` with ``k' = min(k, ndb)``.
    Queries go in chunks of ``chunk_size`` rows (default: from ``memory_budget``, worst case all
    ties), so memory stays bounded for any database size.
    """
    if int(k) < 1:
        raise PipelineError(f"k must be >= 1, not {k}")
    p = Prepared(q_packed, db_packed)
    kk = min(int(k), p.ndb)
    idx_out = np.empty((p.nq, kk), dtype=np.int64)
    dist_out = np.empty((p.nq, kk), dtype=np.uint16)
    if p.nq == 0 or kk == 0:
        return idx_out, dist_out
    rows = chunk_size or chunk_rows(p.ndb, _TOPK_BYTES_PER_PAIR, memory_budget, n_threads,
                                    cap=min(_CHUNK_ELEMS // max(p.ndb, 1), (1 << 16) // p.n_values))

    def fn(s: int, e: int, sc: Scratch) -> None:
        full = p.distances(s, e, sc)
        idx_out[s:e], dist_out[s:e] = select_topk(full, p.ndb, kk, p.n_values, sc)

    run_chunks(p.nq, rows, n_threads, fn)
    return idx_out, dist_out


# ============================================================================ metrics.py

from typing import Iterable, Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.eval.tasks import TASKS

#: Default P@K grid (before clipping to the database size).
DEFAULT_PK: tuple[int, ...] = (1, 5, 10, 20, 50) + tuple(range(100, 5001, 100))
#: Bytes per (query, item) pair held by a full-ranking chunk (distance, relevance, key, bit).
_FULL_BYTES_PER_PAIR = 16
#: Pairs per full-ranking chunk: ~4M keeps the chunk's keys in L3 (measured 20% faster than 8M).
_FULL_CHUNK_ELEMS = 1 << 22


# ----------------------------------------------------------------------------- helpers

def label_words(labels: np.ndarray) -> np.ndarray:
    """Multi-hot labels (n, c) packed into words: relevance is then ``(a & b) != 0``."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise PipelineError(f"labels must be a 2-D (n, classes) array, got shape {lab.shape}")
    return to_words(np.packbits(lab.astype(bool), axis=1))


def pk_grid(ndb: int, kmax: int = 5000) -> list[int]:
    """The default P@K grid clipped to the database: K <= ndb, plus ndb when below ``kmax``."""
    ks = [k for k in DEFAULT_PK if k <= min(ndb, kmax)]
    if ndb < kmax and (not ks or ks[-1] != ndb):
        ks.append(ndb)
    return ks


def _relevance_block(qlw: np.ndarray, dblT: np.ndarray, out: np.ndarray, scratch: Scratch) -> None:
    """``out[i, j] = labels of query i and item j intersect``, in cache-sized row blocks."""
    r, n = out.shape
    nw = dblT.shape[0]
    sub = max(1, min(r, _XOR_ELEMS // max(n, 1)))
    x = scratch.get("land", (sub, n), dblT.dtype)
    for s in range(0, r, sub):
        e = min(r, s + sub)
        xs, o = x[: e - s], out[s:e]
        for w in range(nw):
            np.bitwise_and(qlw[s:e, w, None], dblT[w][None, :], out=xs)
            if w == 0:
                np.not_equal(xs, 0, out=o)
            else:
                o |= xs != 0


def _gather_relevance(qlw: np.ndarray, dblw: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Relevance (r, K) of ranked database rows ``idx`` (r, K) for queries with words ``qlw``."""
    rel = None
    for w in range(dblw.shape[1]):
        hit = (dblw[:, w][idx] & qlw[:, w, None]) != 0
        rel = hit if rel is None else rel | hit
    return rel


def _relevant_positions(rel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat positions of relevant entries of a ranked (r, W) bool matrix, and row start/end."""
    r, W = rel.shape
    flat = np.flatnonzero(rel)  # sorted: by row, then by rank
    ends = np.searchsorted(flat, np.arange(1, r + 1, dtype=np.int64) * W)
    starts = np.concatenate((np.zeros(1, dtype=ends.dtype), ends[:-1]))
    return flat, starts, ends


def _ap_and_hits(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, r: int, W: int,
                 ap_ks: Sequence[int], pk: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """AP@k per query for each k in ``ap_ks`` and relevant counts in the top K for K in ``pk``.

    Works on the relevant positions only: the i-th relevant item (1-based) at rank p adds i/p.
    Per-row sums come from one cumulative sum and ``searchsorted`` bounds (positions are sorted).
    """
    counts = ends - starts
    base = np.arange(r, dtype=np.int64) * W
    prec = np.arange(1, flat.size + 1, dtype=np.float64)
    prec -= np.repeat(starts, counts)  # rank among the relevant items of the row
    rank = flat - np.repeat(base, counts)
    rank += 1  # 1-based rank in the list
    prec /= rank
    del rank
    cs = np.concatenate((np.zeros(1), np.cumsum(prec)))
    aps: dict[int, np.ndarray] = {}
    for k in ap_ks:
        endk = ends if k >= W else np.searchsorted(flat, base + k)
        n = endk - starts
        aps[k] = np.where(n > 0, (cs[endk] - cs[starts]) / np.maximum(n, 1), 0.0)
    hits = np.searchsorted(flat, (base[:, None] + pk[None, :]).ravel()).reshape(r, pk.size) - starts[:, None]
    return aps, hits


def _check_labels(p: Prepared, q_labels: np.ndarray, db_labels: np.ndarray) -> None:
    ql, dbl = np.asarray(q_labels), np.asarray(db_labels)
    if ql.ndim != 2 or dbl.ndim != 2 or ql.shape[1] != dbl.shape[1]:
        raise PipelineError(f"label arrays must be (n, classes) with equal classes: {ql.shape} vs {dbl.shape}")
    if ql.shape[0] != p.nq or dbl.shape[0] != p.ndb:
        raise PipelineError(f"labels rows ({ql.shape[0]}, {dbl.shape[0]}) do not match codes rows ({p.nq}, {p.ndb})")
    if p.nq == 0 or p.ndb == 0:
        raise PipelineError("empty query set or database")


# ----------------------------------------------------------------------------- engine

def rank_metrics(q_packed: np.ndarray, db_packed: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                 *, map_ks: Iterable[int | None] = (), pk: Iterable[int] = (), pr_bits: int | None = None,
                 chunk_size: int | None = None, n_threads: int = 1,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, force_full: bool = False) -> dict:
    """Per-query metrics from one ranking pass.

    Returns ``{"ap": {k: (nq,) array}, "pk": (K' list), "hits": (nq, nK), "pr": {...} | None}``
    with k' = min(k, ndb) (``None`` -> ndb) as dict keys, hits = relevant items in the top K'.
    """
    p = Prepared(q_packed, db_packed)
    _check_labels(p, q_labels, db_labels)
    nq, ndb = p.nq, p.ndb
    qlw, dblw = label_words(q_labels), label_words(db_labels)
    map_ks = list(map_ks)
    ap_ks = sorted({ndb if k is None else min(int(k), ndb) for k in map_ks})
    if any(k < 1 for k in ap_ks):
        raise PipelineError(f"k must be >= 1, got {map_ks}")
    if pr_bits is not None and not 0 <= int(pr_bits) <= p.n_values - 1:
        raise PipelineError(f"PR radius bound {pr_bits} outside 0..{p.n_values - 1} for {p.width}-byte codes")
    pk_arr = np.array([min(int(K), ndb) for K in pk], dtype=np.int64)
    if pk_arr.size and pk_arr.min() < 1:
        raise PipelineError("P@K needs K >= 1")
    need = max(ap_ks + pk_arr.tolist() + [1])
    full_path = force_full or pr_bits is not None or 4 * need > ndb
    aps = {k: np.zeros(nq) for k in ap_ks}
    hits = np.zeros((nq, pk_arr.size), dtype=np.int64)
    nrad = (int(pr_bits) + 1) if pr_bits is not None else 0
    retrieved = np.zeros((nq, nrad), dtype=np.int64)
    rel_retrieved = np.zeros((nq, nrad), dtype=np.int64)
    rel_total = np.zeros(nq, dtype=np.int64)

    if full_path:
        dblT = np.ascontiguousarray(dblw.T)
        jbits = max(1, int(ndb - 1).bit_length())
        shift = jbits + 1  # key = distance << shift | index << 1 | relevant
        dbits = int(p.n_values - 1).bit_length()
        kdt = key_dtype(shift + dbits)
        jcol = np.arange(ndb, dtype=kdt) << kdt.type(1)
        bounds = np.arange(1, nrad + 1, dtype=kdt) << kdt.type(shift)  # keys of distance > r start here
        rows = chunk_size or chunk_rows(ndb, _FULL_BYTES_PER_PAIR, memory_budget, n_threads,
                                        cap=max(1, _FULL_CHUNK_ELEMS // ndb))
        ones_to = np.arange(1, ndb + 1, dtype=np.float64)
        ap_arr = np.array(ap_ks, dtype=np.int64)
        ap_row = np.zeros((nq, len(ap_ks)))

        def fn(s: int, e: int, sc: Scratch) -> None:
            r = e - s
            d = p.distances(s, e, sc)[:, :ndb]
            rel = sc.get("rel", (r, ndb), np.bool_)
            _relevance_block(qlw[s:e], dblT, rel, sc)
            keys = sc.get("keys", (r, ndb), kdt)
            np.left_shift(d, shift, out=keys, dtype=kdt)
            np.bitwise_or(keys, jcol[None, :], out=keys)
            np.bitwise_or(keys, rel.view(np.uint8), out=keys)
            keys.sort(axis=1)  # (distance, index) order; the relevance bit rides along
            relsorted = sc.get("relsorted", (r, ndb), np.uint8)
            np.bitwise_and(keys, 1, out=relsorted, casting="unsafe")
            relsorted = relsorted.view(np.bool_)
            for i in range(r):  # per row: the temporaries stay in cache (faster than chunk-wide)
                f = np.flatnonzero(relsorted[i])  # 0-based ranks of the relevant items
                hits[s + i] = np.searchsorted(f, pk_arr)
                if nrad:
                    c = np.searchsorted(keys[i], bounds)
                    retrieved[s + i] = c
                    rel_retrieved[s + i] = np.searchsorted(f, c)
                    rel_total[s + i] = f.size
                if f.size:
                    prec = f.astype(np.float64)
                    prec += 1.0
                    np.divide(ones_to[: f.size], prec, out=prec)  # i-th relevant at rank p: i/p
                    np.cumsum(prec, out=prec)
                    m = np.searchsorted(f, ap_arr)  # relevant items within each top-k
                    ap_row[s + i] = np.where(m > 0, prec[np.maximum(m - 1, 0)] / np.maximum(m, 1), 0.0)
    else:
        rows = chunk_size or chunk_rows(ndb, _TOPK_BYTES_PER_PAIR, memory_budget, n_threads,
                                        cap=min(_CHUNK_ELEMS // ndb, (1 << 16) // p.n_values))

        def fn(s: int, e: int, sc: Scratch) -> None:
            full = p.distances(s, e, sc)
            idx, _ = select_topk(full, ndb, need, p.n_values, sc)
            rel = _gather_relevance(qlw[s:e], dblw, idx)
            flat, starts, ends = _relevant_positions(rel)
            a, h = _ap_and_hits(flat, starts, ends, e - s, need, ap_ks, pk_arr)
            for k in ap_ks:
                aps[k][s:e] = a[k]
            hits[s:e] = h

    run_chunks(nq, rows, n_threads, fn)
    if full_path:
        for j, k in enumerate(ap_ks):
            aps[k] = ap_row[:, j]
    out: dict = {"ap": aps, "pk": pk_arr.tolist(), "hits": hits, "pr": None}
    if nrad:
        out["pr"] = _pr_from_counts(retrieved, rel_retrieved, rel_total)
    return out


def _pr_from_counts(retrieved: np.ndarray, rel_retrieved: np.ndarray, rel_total: np.ndarray) -> dict:
    """Average per-query precision/recall per radius (see the module docstring for 0/0)."""
    got = retrieved > 0
    n_ret = got.sum(axis=0)
    prec_sum = np.where(got, rel_retrieved / np.maximum(retrieved, 1), 0.0).sum(axis=0)
    precision = np.where(n_ret > 0, prec_sum / np.maximum(n_ret, 1), 0.0)
    has_rel = rel_total > 0
    if has_rel.any():
        recall = (rel_retrieved[has_rel] / rel_total[has_rel, None]).mean(axis=0)
    else:
        recall = np.zeros(retrieved.shape[1])
    return {"radius": list(range(retrieved.shape[1])), "precision": [float(v) for v in precision],
            "recall": [float(v) for v in recall], "n_retrieving": [int(v) for v in n_ret]}


# ----------------------------------------------------------------------------- public metrics

def map_at_k(q_packed: np.ndarray, db_packed: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
             k: int | None = 1000, *, chunk_size: int | None = None, n_threads: int = 1,
             memory_budget: int = DEFAULT_MEMORY_BUDGET) -> float:
    """mAP@k (``k=None``: over the whole database); see the module docstring."""
    m = rank_metrics(q_packed, db_packed, q_labels, db_labels, map_ks=[k], chunk_size=chunk_size,
                     n_threads=n_threads, memory_budget=memory_budget)
    return float(next(iter(m["ap"].values())).mean())


def precision_at_k(q_packed: np.ndarray, db_packed: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                   ks: Sequence[int], *, chunk_size: int | None = None, n_threads: int = 1,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Mean P@K for each K in ``ks`` (K' = min(K, ndb) items)."""
    m = rank_metrics(q_packed, db_packed, q_labels, db_labels, pk=ks, chunk_size=chunk_size,
                     n_threads=n_threads, memory_budget=memory_budget)
    return (m["hits"] / np.array(m["pk"], dtype=np.float64)[None, :]).mean(axis=0)


def pr_curve(q_packed: np.ndarray, db_packed: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
             bits: int | None = None, *, chunk_size: int | None = None, n_threads: int = 1,
             memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict:
    """Precision and recall per Hamming radius 0..bits (default bits: 8 x code bytes)."""
    bits = 8 * np.asarray(q_packed).shape[1] if bits is None else int(bits)
    m = rank_metrics(q_packed, db_packed, q_labels, db_labels, pr_bits=bits, chunk_size=chunk_size,
                     n_threads=n_threads, memory_budget=memory_budget)
    return m["pr"]


def recall_one_at_k(q_packed: np.ndarray, db_packed: np.ndarray, pair_index: np.ndarray,
                    ks: Sequence[int], *, chunk_size: int | None = None) -> np.ndarray:
    """RecallOne@K: fraction of queries whose own pair (db row ``pair_index[i]``) is in the top K.

    Queries with ``pair_index == -1`` (pair not in the database) are excluded. The pair's rank is
    counted directly (items before it in (distance, index) order), no sort needed.
    """
    p = Prepared(q_packed, db_packed)
    pair = np.asarray(pair_index, dtype=np.int64).reshape(-1)
    if pair.size != p.nq:
        raise PipelineError(f"pair_index has {pair.size} entries for {p.nq} queries")
    if pair.size and (pair.min() < -1 or pair.max() >= p.ndb):
        raise PipelineError(f"pair_index values must be -1 or database rows 0..{p.ndb - 1}")
    valid = pair >= 0
    if not valid.any():
        raise PipelineError("no query has its pair in the database")
    rank = np.full(p.nq, -1, dtype=np.int64)
    cols = np.arange(p.ndb)
    rows = chunk_size or max(1, (1 << 22) // max(p.ndb, 1))

    def fn(s: int, e: int, sc: Scratch) -> None:
        d = p.distances(s, e, sc)[:, : p.ndb]
        pi = np.where(valid[s:e], pair[s:e], 0)
        dp = d[np.arange(e - s), pi][:, None]
        before = np.count_nonzero(d < dp, axis=1)
        before += np.count_nonzero((d == dp) & (cols[None, :] < pi[:, None]), axis=1)
        rank[s:e] = before

    run_chunks(p.nq, rows, 1, fn)
    r = rank[valid]
    return np.array([float((r < int(K)).mean()) for K in ks])


# ----------------------------------------------------------------------------- all tasks

def evaluate_all(codes, k: int = 1000, *, pk: Sequence[int] | None = None, chunk_size: int | None = None,
                 n_threads: int = 1, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict:
    """mAP@k, mAP@all, mAP@50, P@100, P@K and PR curves for i2t, t2i, i2i and t2t.

    One full ranking pass per task yields every number. ``codes`` is a
    :class:`~pipeline.eval.codes.Codes`. Values are plain floats in [0, 1].
    """
    k = int(k)
    if k < 1:
        raise PipelineError(f"k must be >= 1, not {k}")
    ndb = codes.n_db
    grid = list(pk) if pk is not None else pk_grid(ndb)
    ks_pk = sorted(set(grid) | {100})
    res: dict = {f"map@{k}": {}, "map@all": {}, "map@50": {}, "pre@100": {},
                 "n_query": codes.n_query, "n_db": ndb, "bits": int(codes.bits),
                 "curves": {"p_at_k": {"k": [int(x) for x in grid]}, "pr": {}}}
    for t in TASKS:
        task = t.name
        m = rank_metrics(getattr(codes, t.query), getattr(codes, t.database), codes.query_labels, codes.db_labels,
                         map_ks=[k, None, 50], pk=ks_pk, pr_bits=int(codes.bits), chunk_size=chunk_size,
                         n_threads=n_threads, memory_budget=memory_budget)
        ap = m["ap"]
        res[f"map@{k}"][task] = float(ap[min(k, ndb)].mean())
        res["map@all"][task] = float(ap[ndb].mean())
        res["map@50"][task] = float(ap[min(50, ndb)].mean())
        prec = (m["hits"] / np.array(m["pk"], dtype=np.float64)[None, :]).mean(axis=0)
        by_k = dict(zip(ks_pk, prec, strict=True))
        res["pre@100"][task] = float(by_k[100])
        res["curves"]["p_at_k"][task] = [float(by_k[x]) for x in grid]
        res["curves"]["pr"][task] = m["pr"]
    res["recall_one@k"] = paired_recall_one(codes, chunk_size=chunk_size)
    return res


RECALL_ONE_KS = (1, 5, 10, 20, 50, 100)


def paired_recall_one(codes, ks: Sequence[int] = RECALL_ONE_KS, max_queries: int = 5000,
                      chunk_size: int | None = None) -> dict:
    """RecallOne@K for the cross-modal tasks with database items as queries.

    Query and database sets are disjoint, so a query's own pair is never in the database; the
    paired protocol (LDR) instead queries with the first ``max_queries`` database items of one
    modality and looks for the same row in the other modality.
    """
    nq = min(codes.n_db, max_queries)
    ks = [int(x) for x in ks if x <= codes.n_db] or [codes.n_db]
    out: dict = {"k": ks, "n_query": nq, "protocol": "database items as queries; own pair = same row"}
    for task, q, db in (("i2t", codes.db_image, codes.db_text), ("t2i", codes.db_text, codes.db_image)):
        out[task] = [float(v) for v in recall_one_at_k(q[:nq], db, np.arange(nq), ks, chunk_size=chunk_size)]
    return out


# ----------------------------------------------------------------------------- reference

#: Seed of the random codes behind the chance level (fixed: the chance level is reproducible).
CHANCE_SEED = 0


def chance_level(codes, k: int = 1000, seed: int = CHANCE_SEED, n_threads: int = 1) -> dict:
    """mAP@k of uniformly random codes (same bits, queries, database and labels), per task.

    The floor a trained model must beat: with random codes the ranking is random, so mAP@k is
    about the relevant fraction of the database.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for task in (t.name for t in TASKS):
        q = np.packbits(rng.integers(0, 2, (codes.n_query, codes.bits), dtype=np.uint8).astype(bool), axis=1)
        db = np.packbits(rng.integers(0, 2, (codes.n_db, codes.bits), dtype=np.uint8).astype(bool), axis=1)
        out[task] = map_at_k(q, db, codes.query_labels, codes.db_labels, k, n_threads=n_threads)
    return {f"map@{k}": out}


def label_summary(codes) -> dict:
    """How many items carry no label, and how many queries have no relevant database item at all.

    Such a query's AP is 0 under every method (relevant = shares a label), so it lowers every mAP
    alike; the report says so instead of showing unexplained low numbers (or 0.00 everywhere when
    the data set has no labels).
    """
    q_lab, db_lab = codes.query_labels.astype(bool), codes.db_labels.astype(bool)
    db_any = db_lab.any(axis=0)
    return {"query_unlabelled": int((~q_lab.any(axis=1)).sum()), "db_unlabelled": int((~db_lab.any(axis=1)).sum()),
            "query_without_relevant": int((~(q_lab & db_any).any(axis=1)).sum()),
            "n_query": codes.n_query, "n_db": codes.n_db}


def cosine_map_at_k(q: np.ndarray, db: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                    k: int = 1000, chunk: int = 256) -> float:
    """mAP@k of ranking by cosine similarity of real-valued embeddings (ties by database index),
    the same AP definition as :func:`map_at_k`: the reference of what binarisation costs."""
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    dn = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    ndb = len(dn)
    kk = min(int(k), ndb)
    qlw, dblw = label_words(q_labels), label_words(db_labels)
    total = 0.0
    for s in range(0, len(qn), chunk):
        sim = qn[s:s + chunk] @ dn.T
        order = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
        rel = _gather_relevance(qlw[s:s + chunk], dblw, order)
        hits = np.cumsum(rel, axis=1)
        prec = hits / np.arange(1, kk + 1)[None, :]
        n_rel = rel.sum(axis=1)
        ap = np.where(n_rel > 0, (prec * rel).sum(axis=1) / np.maximum(n_rel, 1), 0.0)
        total += float(ap.sum())
    return total / len(qn)


def continuous_metrics(codes, k: int = 1000) -> dict | None:
    """``{"map@k": {task: ...}}`` of the codes' continuous embeddings (None when there are none)."""
    if codes.real is None:
        return None
    return {f"map@{k}": {t.name: cosine_map_at_k(codes.real[t.query], codes.real[t.database], codes.query_labels,
                                                codes.db_labels, k) for t in TASKS}}
