"""Optional faiss-cpu binary index for ranking large databases (``cmimh search --backend``).

``kind="flat"`` (:class:`faiss.IndexBinaryFlat`) is exact and returns exactly what
:func:`pipeline.eval.hamming.topk` returns: Hamming distance, ties by ascending database index.
faiss does not order (or select) items tied at the k-th distance by index, so every item tied
at the k-th distance is fetched and the candidates are re-sorted stably by (distance, index).

``kind="hash"`` (:class:`faiss.IndexBinaryHash`, or :class:`faiss.IndexBinaryMultiHash` when
``nhash > 1``) is approximate: only database items whose hash key (``b`` bits of the code) lies
within ``nflip`` flipped bits of the query's key are candidates; their distances are exact (full
codes), ordered the same way, but items may be missed, and a query may get fewer than k results
(padded with index -1 and distance -1). faiss needs whole bytes: codes packed with
``numpy.packbits`` have zero padding bits on both sides, so ``8 * width`` bits gives the same
distances as the unpadded codes.

faiss is imported lazily; without it :func:`available` is False and building an index raises
one :class:`PipelineError` line.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from pipeline.errors import PipelineError

_MISSING = "faiss backend requested but faiss-cpu is not installed (pip install faiss-cpu)"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise PipelineError(_MISSING) from None
    return faiss


def available() -> bool:
    """Whether faiss-cpu can be imported."""
    try:
        _faiss()
    except PipelineError:
        return False
    return True


def search_threads(nq: int, n_threads: int | None = None) -> int:
    """OpenMP threads for a search of ``nq`` queries: 1 for a single query, else ``n_threads``
    (default: the cores). Why: waking faiss's OpenMP team costs more than one query's scan, and
    on a loaded machine much more (measured, issue 16: a median of 38-228 ms with faiss's default
    of 2 threads against 1.2-2 ms with 1); a batch splits its queries over the threads."""
    if nq <= 1:
        return 1
    return max(1, int(n_threads or os.cpu_count() or 1))


@contextlib.contextmanager
def omp_threads(n: int):
    """faiss's OpenMP thread count set to ``n`` for the duration (the previous one restored)."""
    faiss = _faiss()
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(prev)


def _packed(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype != np.uint8:
        raise PipelineError(f"{what} codes must be a 2-D uint8 packed array, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def default_hash_bits(ndb: int, bits: int) -> int:
    """Hash key length: ~16+ items per bucket (log2(ndb) - 4), between 1 and min(bits, 24)."""
    return int(max(1, min(bits, 24, math.floor(math.log2(max(ndb, 2))) - 4)))


class FaissBinaryIndex:
    """A faiss binary index over packed database codes (``numpy.packbits`` rows, uint8).

    kind "flat": exact, same results as :func:`pipeline.eval.hamming.topk`.
    kind "hash": approximate; ``b`` = hash key bits (default :func:`default_hash_bits`, the
    first ``b`` bits of each code, or of each of ``nhash`` consecutive slices), ``nflip`` =
    largest number of key bits flipped when probing buckets (more = better recall, slower;
    default 2), ``nhash`` = number of hash tables (``IndexBinaryMultiHash`` when > 1; needs
    ``nhash * b <= bits``).
    """

    def __init__(self, db_packed: np.ndarray, kind: str = "flat", *, b: int | None = None,
                 nflip: int = 2, nhash: int = 1) -> None:
        faiss = _faiss()
        db = _packed(db_packed, "database")
        self.kind, self.ndb, self.bits = kind, int(db.shape[0]), 8 * int(db.shape[1])
        if self.bits == 0:
            raise PipelineError("database codes have zero width")
        if kind == "flat":
            self.index = faiss.IndexBinaryFlat(self.bits)
        elif kind == "hash":
            self.b = int(b) if b is not None else default_hash_bits(self.ndb, self.bits)
            if self.b < 1 or nhash < 1 or nhash * self.b > self.bits or nflip < 0:
                raise PipelineError(f"bad hash parameters b={self.b} nhash={nhash} nflip={nflip} "
                                    f"for {self.bits}-bit codes")
            self.index = (faiss.IndexBinaryHash(self.bits, self.b) if nhash == 1
                          else faiss.IndexBinaryMultiHash(self.bits, int(nhash), self.b))
            self.index.nflip = int(nflip)
        else:
            raise PipelineError(f"unknown faiss index kind {kind!r} (use 'flat' or 'hash')")
        if self.ndb:
            self.index.add(db)

    def search(self, q_packed: np.ndarray, k: int, n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: ``(indices int64 (nq, k'), distances int32 (nq, k'))``, k' = min(k, ndb),
        ordered by distance then ascending index (hash: -1 / -1 where fewer were found). One query
        runs on one thread, a batch on ``n_threads`` (default: the cores), :func:`search_threads`."""
        with omp_threads(search_threads(np.shape(q_packed)[0] if np.ndim(q_packed) == 2 else 1, n_threads)):
            return self._search(q_packed, k)

    def _search(self, q_packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if int(k) < 1:
            raise PipelineError(f"k must be >= 1, not {k}")
        q = _packed(q_packed, "query")
        if q.shape[1] * 8 != self.bits:
            raise PipelineError(f"query codes have {8 * q.shape[1]} bits, the index {self.bits}")
        kk = min(int(k), self.ndb)
        nq = q.shape[0]
        if nq == 0 or kk == 0:
            return np.empty((nq, kk), np.int64), np.empty((nq, kk), np.int32)
        if self.kind == "flat":
            return self._flat(q, kk)
        D, I = self.index.search(q, kk)
        D = D.astype(np.int32)
        D[I < 0] = -1
        # Stable order (distance, index), missing results (-1) last.
        key = np.where(I < 0, np.iinfo(np.int64).max, D.astype(np.int64) * (self.ndb + 1) + I)
        order = np.argsort(key, axis=1, kind="stable")
        return np.take_along_axis(I, order, 1).astype(np.int64), np.take_along_axis(D, order, 1)

    def _flat(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        nq = q.shape[0]
        k1 = min(kk + 1, self.ndb)  # one more: shows whether the k-th distance ties beyond k
        D, I = self.index.search(q, k1)
        kth = D[:, kk - 1]
        out_i = np.empty((nq, kk), np.int64)
        out_d = np.empty((nq, kk), np.int32)
        done = (D[:, k1 - 1] > kth) if k1 > kk else np.ones(nq, bool)
        if done.any():  # the kk nearest are unique as a set; only their order may differ
            Di, Ii = D[done, :kk].astype(np.int64), I[done, :kk]
            order = np.argsort(Di * self.ndb + Ii, axis=1)
            out_i[done] = np.take_along_axis(Ii, order, 1)
            out_d[done] = np.take_along_axis(Di, order, 1)
        rest = np.flatnonzero(~done)
        # Tied beyond k: fetch every item with distance <= k-th distance (range search is d < radius).
        for t in np.unique(kth[rest]):
            rows = rest[kth[rest] == t]
            lims, Dr, Ir = self.index.range_search(np.ascontiguousarray(q[rows]), int(t) + 1)
            Dr = Dr.astype(np.int64)
            Ir = Ir.astype(np.int64)
            for n, r in enumerate(rows):
                d, i = Dr[lims[n]:lims[n + 1]], Ir[lims[n]:lims[n + 1]]
                sel = np.argsort(d * self.ndb + i)[:kk]
                out_i[r], out_d[r] = i[sel], d[sel]
        return out_i, out_d
