"""Exact Hamming ranking of packed binary codes, deterministic under ties.

Items at equal distance are ranked by ascending database index, so a ranking (and every metric
derived from it) is the same on every machine, chunk size and thread count; peers' unstable
``argsort`` makes mAP depend on the sort implementation when codes are short and ties many.

Distances take only ``bits + 1`` values, so ranking is counting, not sorting
(:mod:`pipeline.eval.kernels`): codes XOR as whole 64-bit words and popcount on the CPU, and the
top k comes from a distance threshold (guessed from a sample, checked by one counting pass) and a
counting sort of the few items within it. Queries go in chunks whose scratch buffers are reused.

Two engines compute the same numbers: the compiled kernels for real sizes, and their NumPy twins
(:mod:`pipeline.eval.numpy_kernels`) below :data:`COMPILED_FROM_PAIRS` query-item pairs, where
importing numba and loading its cached kernels (about a second) would cost more than the ranking,
unless the process has loaded them already (:func:`compiled_engine`).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from pipeline.errors import PipelineError
from pipeline.eval import numpy_kernels
from pipeline.eval.words import words64

#: Default working-memory budget (bytes) for one ranking call; chunks are sized from it.
DEFAULT_MEMORY_BUDGET = 1 << 30
#: Distance bytes per chunk: ~1 MiB keeps a chunk's distances (and keys) in L2.
_CHUNK_BYTES = 1 << 20
#: Most query rows per chunk.
_MAX_ROWS = 64
#: From this many query-item pairs in one call (all tasks together) the compiled kernels rank;
#: below it the NumPy twins do. Measured on a 2-core CPU: a demo evaluate (4 x 500 x 2,000 pairs,
#: plus 2 x 2,000 x 2,000 for RecallOne@K) ranks in ~0.25 s with NumPy, while importing numba and
#: loading its cached kernels alone takes ~1.3 s; NumPy costs ~35 ns a pair, the kernels ~2.5 ns.
COMPILED_FROM_PAIRS = 40_000_000
#: ``auto`` (by size, as above), ``numpy`` or ``compiled``: the environment variable
#: ``CMIMH_RANKING_ENGINE`` sets it for a run (benchmarks, checks); tests set it directly.
ENGINE = os.environ.get("CMIMH_RANKING_ENGINE", "auto")


def compiled_engine(pairs: int):
    """The compiled kernels module when ``pairs`` query-item pairs are worth its start-up, or the
    process has paid that start-up already (the module is imported), or :data:`ENGINE` asks for
    it; else None (use :mod:`pipeline.eval.numpy_kernels`). Both give the same numbers, so only
    the time differs: in ``cmimh evaluate`` at MS-COCO size the paired metrics (2 x 5,000 x 5,000
    pairs, below the threshold) took 0.35 s with the NumPy twins, after the ranking had loaded
    the kernels anyway."""
    if ENGINE not in ("auto", "numpy", "compiled"):
        raise PipelineError(f"CMIMH_RANKING_ENGINE must be auto, numpy or compiled, not {ENGINE!r}")
    if ENGINE == "numpy" or (ENGINE == "auto" and pairs < COMPILED_FROM_PAIRS
                             and "pipeline.eval.kernels" not in sys.modules):
        return None
    from pipeline.eval import kernels  # imports numba: only here

    return kernels


class Scratch:
    """Reusable named buffers (one per thread): avoids re-faulting fresh pages every chunk."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        n = math.prod(shape)  # (np.prod took ~8% of a counting chunk's time: ~20 us a call)
        dt = np.dtype(dtype)
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dt or buf.size < n:
            buf = self._bufs[name] = np.empty(max(n, 1), dtype=dt)
        return buf[:n].reshape(shape)

    def zeros(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        a = self.get(name, shape, dtype)
        a[...] = 0
        return a


class Prepared:
    """Query and database codes as 64-bit words (the database one row per word), plus the
    distance range; shared by ranking and metrics."""

    def __init__(self, q_packed: np.ndarray, db_packed: np.ndarray) -> None:
        q, db = np.asarray(q_packed), np.asarray(db_packed)
        if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
            raise PipelineError(f"query and database codes differ in shape: {q.shape} vs {db.shape}")
        self.width = int(q.shape[1])
        if self.width == 0:
            raise PipelineError("codes have zero width")
        self.qw = words64(q)
        self.dbT = np.ascontiguousarray(words64(db).T)  # (n_words, ndb): one row per word
        self.nq, self.ndb = int(q.shape[0]), int(db.shape[0])
        self.ndb_pad = -(-self.ndb // 8) * 8
        self.n_values = 8 * self.width + 1  # distances lie in 0..8*width
        self.dist_dtype = np.dtype(np.uint8 if self.n_values <= 256 else np.uint16)
        # 2 * distance + relevant (metrics): one byte up to 127 bits
        self.key_dtype = np.dtype(np.uint8 if 2 * self.n_values <= 256 else np.uint16)
        self.kernels = compiled_engine(self.nq * self.ndb)  # None: the NumPy twins

    def distances(self, start: int, stop: int, scratch: Scratch, name: str = "d") -> np.ndarray:
        """Distances of queries start..stop-1 in a reused (rows, ndb_pad) buffer: rows padded to a
        multiple of 8 items (padding undefined; use ``[:, :ndb]``) so they can be read as words."""
        full = scratch.get(name, (stop - start, self.ndb_pad), self.dist_dtype)
        if self.ndb:
            (self.kernels or numpy_kernels).distances(self.qw[start:stop], self.dbT, full[:, : self.ndb])
        return full

    def pair_ranks(self, start: int, stop: int, pair: np.ndarray, out: np.ndarray, scratch: Scratch) -> None:
        """0-based rank of database row ``pair[i]`` (-1: none) for queries start..stop-1 into ``out``
        (the items before it: closer, or as close with a smaller index). Codes of one word (up to
        64 bits) with the compiled kernels are counted straight from the codes, no distance rows
        stored (:func:`pipeline.eval.kernels.pair_ranks_words`)."""
        if self.kernels is not None and self.qw.shape[1] == 1:
            self.kernels.pair_ranks_words(self.qw[start:stop], self.dbT[0], pair, out)
        else:
            (self.kernels or numpy_kernels).pair_ranks(self.distances(start, stop, scratch)[:, : self.ndb], pair, out)


def hamming_distances(q_packed: np.ndarray, db_packed: np.ndarray) -> np.ndarray:
    """All (nq, ndb) Hamming distances as uint16 (for small sets; ranking never needs this)."""
    p = Prepared(q_packed, db_packed)
    out = np.empty((p.nq, p.ndb), dtype=np.uint16)
    if p.nq and p.ndb:
        (p.kernels or numpy_kernels).distances(p.qw, p.dbT, out)
    return out


def run_chunks(n: int, rows: int, n_threads: int, fn: Callable[[int, int, Scratch], None]) -> None:
    """Call ``fn(start, stop, scratch)`` over row chunks, on ``n_threads`` threads.

    The kernels release the GIL, so threads run in parallel; each keeps its own scratch buffers and
    writes a disjoint slice of the outputs.
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


def chunk_rows(ndb: int, bytes_per_pair: int, memory_budget: int, n_threads: int,
               cap: int | None = None, chunk_bytes: int | None = None) -> int:
    """Query rows per chunk: about ``chunk_bytes`` of per-pair scratch (default
    :data:`_CHUNK_BYTES`, cache-sized), at most ``cap`` (default :data:`_MAX_ROWS`), and all
    threads' chunks within ``memory_budget`` bytes."""
    per_thread = max(1, memory_budget // max(1, n_threads))
    per_pair = max(1, bytes_per_pair * max(ndb, 1))
    rows = min(cap or _MAX_ROWS, max(1, (chunk_bytes or _CHUNK_BYTES) // per_pair), per_thread // per_pair)
    return int(max(1, rows))


class Database:
    """Database codes prepared for ranking once (64-bit words, one row per word; no copy for
    64-bit codes, so a memory-mapped file stays mapped): a service ranks every query against it."""

    def __init__(self, db_packed: np.ndarray) -> None:
        db = np.asarray(db_packed)
        if db.ndim != 2 or db.dtype != np.uint8 or db.shape[1] == 0:
            raise PipelineError(f"database codes must be a 2-D uint8 array of packed codes, got {db.dtype} {db.shape}")
        self.width = int(db.shape[1])
        self.ndb = int(db.shape[0])
        self.dbT = np.ascontiguousarray(words64(db).T)
        self.ndb_pad = -(-self.ndb // 8) * 8
        self.n_values = 8 * self.width + 1
        self.dist_dtype = np.dtype(np.uint8 if self.n_values <= 256 else np.uint16)
        self._local = threading.local()

    def topk(self, q_packed: np.ndarray, k: int, chunk_size: int | None = None, *, n_threads: int = 1,
             memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k rows per query (see :func:`topk`)."""
        if int(k) < 1:
            raise PipelineError(f"k must be >= 1, not {k}")
        q = np.asarray(q_packed)
        if q.ndim != 2 or q.shape[1] != self.width:
            raise PipelineError(f"query and database codes differ in shape: {q.shape} vs (n, {self.width})")
        qw = words64(q)
        nq = int(q.shape[0])
        kk = min(int(k), self.ndb)
        idx_out = np.empty((nq, kk), dtype=np.int64)
        dist_out = np.empty((nq, kk), dtype=np.uint16)
        if nq == 0 or kk == 0:
            return idx_out, dist_out
        # Several rows share each read of the database codes (measured at 1M items: 8 rows cost 0.62 ms
        # a query, 1 row 1.0 ms), within the memory budget.
        per_row = self.ndb_pad * self.dist_dtype.itemsize
        rows = chunk_size or int(max(1, min(_MAX_ROWS, max(8, _CHUNK_BYTES // per_row),
                                            memory_budget // max(1, n_threads) // per_row)))

        from pipeline.eval import kernels  # a service's database: always the compiled kernels

        def fn(s: int, e: int, sc: Scratch) -> None:
            full = sc.get("d", (e - s, self.ndb_pad), self.dist_dtype)
            kernels.distances(qw[s:e], self.dbT, full[:, : self.ndb])
            kernels.topk_from_distances(full, self.ndb, self.n_values, kk, idx_out[s:e], dist_out[s:e],
                                        sc.get("cand", (self.ndb,), np.int64))

        if n_threads <= 1 or nq <= rows:  # one thread: this thread's buffers, kept between calls (a service)
            sc = getattr(self._local, "scratch", None)
            if sc is None:
                sc = self._local.scratch = Scratch()
            for s in range(0, nq, rows):
                fn(s, min(nq, s + rows), sc)
        else:
            run_chunks(nq, rows, n_threads, fn)
        return idx_out, dist_out


def topk(q_packed: np.ndarray, db_packed: np.ndarray, k: int, chunk_size: int | None = None, *,
         n_threads: int = 1, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k database rows per query by Hamming distance, ties by ascending index.

    Returns ``(indices int64 (nq, k'), distances uint16 (nq, k'))`` with ``k' = min(k, ndb)``.
    Queries go in chunks of ``chunk_size`` rows (default: cache-sized, within ``memory_budget``),
    so memory stays bounded for any database size.
    """
    q, db = np.asarray(q_packed), np.asarray(db_packed)
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise PipelineError(f"query and database codes differ in shape: {q.shape} vs {db.shape}")
    if int(k) < 1:
        raise PipelineError(f"k must be >= 1, not {k}")
    return Database(db).topk(q, k, chunk_size, n_threads=n_threads, memory_budget=memory_budget)
