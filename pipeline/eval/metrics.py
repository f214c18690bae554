"""Retrieval metrics on Hamming rankings of packed codes.

Relevant = the query and the database item share at least one label. Rankings are by Hamming
distance with ties broken by ascending database index (:mod:`pipeline.eval.hamming`), so
every number here is deterministic. Definitions (the paper's protocol, made exact):

* AP@k of a query: over its top k' = min(k, ndb) items, the sum of precision@i at the relevant
  positions i (1-based) divided by the number of relevant items within the top k'; 0 when none.
  mAP@k is the mean over ALL queries; ``k=None`` is the whole database (mAP@all).
* P@K: relevant items in the top K' = min(K, ndb), divided by K'; averaged over queries.
  The default curve grid is K = 1, 5, 10, 20, 50 and every multiple of 100 up to 5,000 (those
  <= ndb, plus ndb itself when smaller than 5,000): dense where curves bend, 55 points at most.
* PR by Hamming radius r = 0..bits: items at distance <= r are retrieved. Precision(r) is the
  mean of per-query precision over the queries that retrieved at least one item at radius r
  (the peers' convention; 0.0 when no query retrieved anything, with ``n_retrieving`` saying
  so). Recall(r) is the mean of relevant-retrieved / relevant-in-database over queries having
  at least one relevant item in the database.
* RecallOne@K (paired data): fraction of queries whose own pair ranks within the top K.

How (:mod:`pipeline.eval.kernels`; small problems take their NumPy twins,
:mod:`pipeline.eval.numpy_kernels`, which sort instead): a distance takes only bits + 1 values, so per query the
counts of irrelevant and relevant items at each distance give the PR curve outright, and their
prefix sums say where each distance's bucket starts in the ranking; one counting pass in database
order (the tie rule) then places every item's relevance at its rank, which gives mAP@all, every
mAP@k and P@K exactly, in O(n_db) per query with no comparison sort (on CPUs with AVX-512 VBMI2,
64 items at a time: :func:`pipeline.eval.kernels.ranked_stats_simd`). When only the head of the
ranking matters (mAP@k, P@K for small k), the exact top-k selection is enough. Queries go in
cache-sized chunks, on threads; the relevance of a chunk is computed once for all the tasks that
share its labels (:func:`rank_metrics_tasks`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.eval import numpy_kernels
from pipeline.eval.hamming import DEFAULT_MEMORY_BUDGET, Prepared, Scratch, chunk_rows, compiled_engine, run_chunks
from pipeline.eval.words import label_words64
from pipeline.eval.tasks import TASKS

#: Default P@K grid (before clipping to the database size).
DEFAULT_PK: tuple[int, ...] = (1, 5, 10, 20, 50) + tuple(range(100, 5001, 100))
#: Scratch bytes per (query, item) pair of a counting chunk: relevance and key.
_FULL_BYTES_PER_PAIR = 2
#: Bytes past every distance's bucket that the vector kernel may write, and past the last rank
#: that it may read (whole 64-byte vectors).
_SIMD_PAD = 64
#: Most bytes of one thread's buckets with room for every item in each (nv * (ndb + 64): 7.6 MB
#: for 64-bit codes and 117,000 items); bigger problems count first and lay the buckets end to end.
_SIMD_BUCKET_BYTES = 64 << 20
#: Per-pair scratch of a vector kernel's chunk: more rows than the scalar kernels' 1 MiB (16 rows
#: of 117,000 items against 4), so that a thread's buckets stay in cache from row to row, between
#: the other kernels' passes (measured 2.57 -> 1.99 s wall for the four tasks' ranking at MS-COCO
#: size, alternating in one process; 2.51 -> 2.26 s on uniform random codes).
_SIMD_CHUNK_BYTES = 4 << 20
#: The head of the ranking (top-k path) is enough while max(k) is below this fraction of ndb.
_HEAD_FRACTION = 0.25
#: Scratch bytes per (query, item) pair of a NumPy chunk (order, ranked relevance, prefix counts,
#: precisions, keys), and the bytes a NumPy chunk may take: 8 MiB chunks (~90 rows of 2,000
#: items) made a demo evaluate 0.45 s against 0.6 s with 32 MiB ones (fresh pages cost).
_NUMPY_BYTES_PER_PAIR = 48
_NUMPY_CHUNK_BYTES = 8 << 20


# ----------------------------------------------------------------------------- helpers

def label_words(labels: np.ndarray) -> np.ndarray:
    """Multi-hot labels (n, c) packed into 64-bit words: relevance is ``(a & b) != 0``, word-wise."""
    return label_words64(labels)


def pk_grid(ndb: int, kmax: int = 5000) -> list[int]:
    """The default P@K grid clipped to the database: K <= ndb, plus ndb when below ``kmax``."""
    ks = [k for k in DEFAULT_PK if k <= min(ndb, kmax)]
    if ndb < kmax and (not ks or ks[-1] != ndb):
        ks.append(ndb)
    return ks


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
                 memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict:
    """Per-query metrics from one ranking pass.

    Returns ``{"ap": {k: (nq,) array}, "pk": (K' list), "hits": (nq, nK), "pr": {...} | None}``
    with k' = min(k, ndb) (``None`` -> ndb) as dict keys, hits = relevant items in the top K'.
    """
    return rank_metrics_tasks([(q_packed, db_packed)], q_labels, db_labels, map_ks=map_ks, pk=pk, pr_bits=pr_bits,
                              chunk_size=chunk_size, n_threads=n_threads, memory_budget=memory_budget)[0]


def rank_metrics_tasks(tasks: Sequence[tuple[np.ndarray, np.ndarray]], q_labels: np.ndarray,
                       db_labels: np.ndarray, *, map_ks: Iterable[int | None] = (), pk: Iterable[int] = (),
                       pr_bits: int | None = None, chunk_size: int | None = None, n_threads: int = 1,
                       memory_budget: int = DEFAULT_MEMORY_BUDGET) -> list[dict]:
    """:func:`rank_metrics` for several (query codes, database codes) pairs with the same labels
    (the four tasks of one ``codes.h5``): one pass over query chunks, the chunk's relevance
    computed once for all pairs. Returns one result per pair, in order."""
    if not tasks:
        return []
    preps = [Prepared(q, db) for q, db in tasks]
    p0 = preps[0]
    for p in preps[1:]:
        if (p.nq, p.ndb, p.width) != (p0.nq, p0.ndb, p0.width):
            raise PipelineError("the tasks' codes differ in rows or width")
    _check_labels(p0, q_labels, db_labels)
    nq, ndb, nv = p0.nq, p0.ndb, p0.n_values
    qlw, dblw = label_words64(q_labels), label_words64(db_labels)
    map_ks = list(map_ks)
    ap_ks = sorted({ndb if k is None else min(int(k), ndb) for k in map_ks})
    if any(k < 1 for k in ap_ks):
        raise PipelineError(f"k must be >= 1, got {map_ks}")
    if pr_bits is not None and not 0 <= int(pr_bits) <= nv - 1:
        raise PipelineError(f"PR radius bound {pr_bits} outside 0..{nv - 1} for {p0.width}-byte codes")
    pk_list = [min(int(K), ndb) for K in pk]
    if pk_list and min(pk_list) < 1:
        raise PipelineError("P@K needs K >= 1")
    pk_sorted = np.array(sorted(set(pk_list)), dtype=np.int64)
    pk_col = np.searchsorted(pk_sorted, np.array(pk_list, dtype=np.int64))  # back to the caller's order
    need_all = ndb in ap_ks  # AP@ndb is AP@all: from the whole ranking
    head_ks = np.array([k for k in ap_ks if k < ndb or not need_all], dtype=np.int64)
    kmax = int(max(head_ks.tolist() + pk_sorted.tolist() + [0]))
    nrad = (int(pr_bits) + 1) if pr_bits is not None else 0
    counting = need_all or nrad > 0 or kmax > _HEAD_FRACTION * ndb
    T = len(preps)
    ap_all = np.zeros((T, nq))
    ap_head = np.zeros((T, nq, head_ks.size))
    hits = np.zeros((T, nq, pk_sorted.size), dtype=np.int64)
    counts = np.zeros((T, nq, nv, 2), dtype=np.int64) if nrad else None  # [irrelevant, relevant] per distance

    kernels = compiled_engine(T * nq * ndb)
    for p in preps:  # one engine for the whole call: the tasks' distances too (each alone may be small)
        p.kernels = kernels
    if kernels is None:  # small: the NumPy twins rank whole rows (a stable sort), every number at once
        rows = chunk_size or max(1, min(memory_budget, _NUMPY_CHUNK_BYTES) // (_NUMPY_BYTES_PER_PAIR * ndb))

        def fn(s: int, e: int, sc: Scratch) -> None:
            rel = numpy_kernels.relevance(qlw[s:e], dblw)
            dist = np.empty((e - s, ndb), p0.dist_dtype)
            for t, p in enumerate(preps):
                numpy_kernels.distances(p.qw[s:e], p.dbT, dist)
                numpy_kernels.ranked_stats(rel, dist, nv, head_ks, pk_sorted, ap_all[t, s:e], ap_head[t, s:e],
                                           hits[t, s:e], None if counts is None else counts[t, s:e])
    elif counting:
        inv = 1.0 / np.arange(1, ndb + 1 + _SIMD_PAD, dtype=np.float64)  # 1 / rank (and a pad the vectors may read)
        dblT = np.ascontiguousarray(dblw.T)
        # the vector kernel (AVX-512) where the CPU has it and keys are bytes (up to 127 bits); with
        # room for every item in each distance's bucket while that fits _SIMD_BUCKET_BYTES a
        # thread and all threads' buckets a quarter of the memory budget (no counting pass), else
        # the buckets laid end to end after a counting pass
        simd = kernels.SIMD and p0.key_dtype == np.uint8
        room = nv * (ndb + _SIMD_PAD)
        exact = room > _SIMD_BUCKET_BYTES or room * max(1, n_threads) > memory_budget // 4
        rows = chunk_size or chunk_rows(ndb, _FULL_BYTES_PER_PAIR, memory_budget, n_threads,
                                        chunk_bytes=_SIMD_CHUNK_BYTES if simd else None)

        def fn(s: int, e: int, sc: Scratch) -> None:
            r = e - s
            rel = sc.get("rel", (r, ndb), np.uint8)
            (kernels.relevance_simd if simd else kernels.relevance)(qlw[s:e], dblT, rel)
            keys = sc.get("keys", (r, ndb), p0.key_dtype)
            for t, p in enumerate(preps):
                if simd and p.qw.shape[1] == 1:  # up to 64 bits: 8 keys a 512-bit popcount
                    kernels.keys_simd(p.qw[s:e], p.dbT[0], rel, keys)
                else:
                    kernels.keys(p.qw[s:e], p.dbT, rel, keys)
                H = sc.zeros("H", (r, 2 * nv), np.int64)
                if simd:
                    if exact:
                        kernels.key_counts(keys, H)
                    buf = sc.get("buckets", (ndb + _SIMD_PAD * nv if exact else nv * (ndb + _SIMD_PAD),), np.uint8)
                    kernels.ranked_stats_simd(keys, H, exact, need_all, head_ks, pk_sorted, buf, inv,
                                              sc.get("acc", (32,), np.float64), ap_all[t, s:e], ap_head[t, s:e],
                                              hits[t, s:e])
                else:
                    kernels.key_counts(keys, H)
                    kernels.ranked_stats(keys, H, need_all, head_ks, pk_sorted, sc.get("ranked", (2, ndb), np.uint8),
                                         inv, sc.get("w", (ndb,), np.float64), ap_all[t, s:e], ap_head[t, s:e],
                                         hits[t, s:e])
                if counts is not None:
                    counts[t, s:e] = H.reshape(r, nv, 2)
    else:
        inv = 1.0 / np.arange(1, kmax + 1, dtype=np.float64)  # 1 / rank
        rows = chunk_size or chunk_rows(ndb, p0.dist_dtype.itemsize, memory_budget, n_threads)

        def fn(s: int, e: int, sc: Scratch) -> None:
            r = e - s
            idx = sc.get("idx", (r, kmax), np.int64)
            dist = sc.get("dist", (r, kmax), np.uint16)
            ranked = sc.get("ranked", (kmax,), np.uint8)
            for t, p in enumerate(preps):
                d = p.distances(s, e, sc)
                kernels.topk_from_distances(d, ndb, nv, kmax, idx, dist, sc.get("cand", (ndb,), np.int64))
                kernels.head_stats(idx, qlw[s:e], dblw, head_ks, pk_sorted, ranked, inv, ap_head[t, s:e],
                                   hits[t, s:e])

    if kmax > 0 or need_all or nrad:
        run_chunks(nq, rows, n_threads, fn)
    out = []
    for t in range(T):
        aps = {int(k): ap_head[t, :, j] for j, k in enumerate(head_ks)}
        if need_all:
            aps[ndb] = ap_all[t]
        pr = None
        if counts is not None:
            c = counts[t, :, :nrad]
            retrieved = np.cumsum(c.sum(axis=2), axis=1)
            rel_retrieved = np.cumsum(c[:, :, 1], axis=1)
            pr = _pr_from_counts(retrieved, rel_retrieved, counts[t, :, :, 1].sum(axis=1))
        out.append({"ap": {k: aps[k] for k in ap_ks}, "pk": pk_list, "hits": hits[t][:, pk_col], "pr": pr})
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
                    ks: Sequence[int], *, chunk_size: int | None = None, n_threads: int = 1) -> np.ndarray:
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
    rows = chunk_size or chunk_rows(p.ndb, p.dist_dtype.itemsize, DEFAULT_MEMORY_BUDGET, n_threads)

    def fn(s: int, e: int, sc: Scratch) -> None:
        p.pair_ranks(s, e, pair[s:e], rank[s:e], sc)

    run_chunks(p.nq, rows, n_threads, fn)
    r = rank[valid]
    return np.array([float((r < int(K)).mean()) for K in ks])


# ----------------------------------------------------------------------------- all tasks

def evaluate_all(codes, k: int = 1000, *, pk: Sequence[int] | None = None, chunk_size: int | None = None,
                 n_threads: int = 1, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict:
    """mAP@k, mAP@all, mAP@50, P@100, P@K and PR curves for i2t, t2i, i2i and t2t, and RecallOne@K.

    One counting pass over the queries yields every number of the four tasks. ``codes`` is a
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
    ms = rank_metrics_tasks([(getattr(codes, t.query), getattr(codes, t.database)) for t in TASKS],
                            codes.query_labels, codes.db_labels, map_ks=[k, None, 50], pk=ks_pk,
                            pr_bits=int(codes.bits), chunk_size=chunk_size, n_threads=n_threads,
                            memory_budget=memory_budget)
    for t, m in zip(TASKS, ms, strict=True):
        task = t.name
        ap = m["ap"]
        res[f"map@{k}"][task] = float(ap[min(k, ndb)].mean())
        res["map@all"][task] = float(ap[ndb].mean())
        res["map@50"][task] = float(ap[min(50, ndb)].mean())
        prec = (m["hits"] / np.array(m["pk"], dtype=np.float64)[None, :]).mean(axis=0)
        by_k = dict(zip(ks_pk, prec, strict=True))
        res["pre@100"][task] = float(by_k[100])
        res["curves"]["p_at_k"][task] = [float(by_k[x]) for x in grid]
        res["curves"]["pr"][task] = m["pr"]
    res["recall_one@k"] = paired_recall_one(codes, chunk_size=chunk_size, n_threads=n_threads)
    return res


RECALL_ONE_KS = (1, 5, 10, 20, 50, 100)


def paired_recall_one(codes, ks: Sequence[int] = RECALL_ONE_KS, max_queries: int = 5000,
                      chunk_size: int | None = None, n_threads: int = 1) -> dict:
    """RecallOne@K for the cross-modal tasks with database items as queries.

    Query and database sets are disjoint, so a query's own pair is never in the database; the
    paired protocol (LDR) instead queries with the first ``max_queries`` database items of one
    modality and looks for the same row in the other modality.
    """
    nq = min(codes.n_db, max_queries)
    ks = [int(x) for x in ks if x <= codes.n_db] or [codes.n_db]
    out: dict = {"k": ks, "n_query": nq, "protocol": "database items as queries; own pair = same row"}
    for task, q, db in (("i2t", codes.db_image, codes.db_text), ("t2i", codes.db_text, codes.db_image)):
        out[task] = [float(v) for v in recall_one_at_k(q[:nq], db, np.arange(nq), ks, chunk_size=chunk_size,
                                                       n_threads=n_threads)]
    return out


# ----------------------------------------------------------------------------- reference

#: Seed of the random codes behind the chance level (fixed: the chance level is reproducible).
CHANCE_SEED = 0


def chance_level(codes, k: int = 1000, seed: int = CHANCE_SEED, n_threads: int = 1) -> dict:
    """mAP@k of uniformly random codes (same bits, queries, database and labels), per task.

    The floor a trained model must beat: with random codes the ranking is random, so mAP@k is
    about the relevant fraction of the database. The four tasks' random codes are drawn in task
    order from one generator, then ranked in one pass (the labels' relevance shared).
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in TASKS:
        q = np.packbits(rng.integers(0, 2, (codes.n_query, codes.bits), dtype=np.uint8).astype(bool), axis=1)
        db = np.packbits(rng.integers(0, 2, (codes.n_db, codes.bits), dtype=np.uint8).astype(bool), axis=1)
        pairs.append((q, db))
    ms = rank_metrics_tasks(pairs, codes.query_labels, codes.db_labels, map_ks=[k], n_threads=n_threads)
    return {f"map@{k}": {t.name: float(next(iter(m["ap"].values())).mean()) for t, m in zip(TASKS, ms, strict=True)}}


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


def _gather_relevance(qlw: np.ndarray, dblw: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Relevance (r, K) of ranked database rows ``idx`` (r, K) for queries with label words ``qlw``."""
    rel = None
    for w in range(dblw.shape[1]):
        hit = (dblw[:, w][idx] & qlw[:, w, None]) != 0
        rel = hit if rel is None else rel | hit
    return rel


def _stable_head(v: np.ndarray, kk: int) -> np.ndarray:
    """Per row of ``v`` (r, n), the columns of the kk smallest values ordered by (value, column):
    ``argsort(v, kind="stable")[:, :kk]`` without sorting whole rows (partition, then sort the few
    candidates, every item tied with the kk-th included)."""
    r, n = v.shape
    if kk >= n:
        return np.argsort(v, axis=1, kind="stable")
    kth = np.partition(v, kk - 1, axis=1)[:, kk - 1]
    rows, cols = np.nonzero(v <= kth[:, None])  # row-major: columns ascending within a row
    order = np.lexsort((cols, v[rows, cols], rows))
    counts = np.bincount(rows, minlength=r)
    starts = np.cumsum(counts) - counts
    return cols[order][starts[:, None] + np.arange(kk)[None, :]]


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
        order = _stable_head(-sim, kk)
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
