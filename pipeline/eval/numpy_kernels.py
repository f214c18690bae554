"""NumPy twins of the compiled ranking kernels (:mod:`pipeline.eval.kernels`), for small problems.

Why two implementations: a process that imports numba and loads the cached kernels pays about a
second before it ranks anything, which is most of a demo-sized ``cmimh evaluate`` (500 queries x
2,000 items: the ranking itself takes milliseconds). Below
:data:`pipeline.eval.hamming.COMPILED_FROM_PAIRS` query-item pairs the callers use these instead;
they compute the same ranking (by distance, ties by ascending database index: a stable sort of the
distances) and the same per-query numbers, equal to the compiled kernels and to the previous
sort-based evaluation to 1e-9 (only the order of floating-point additions differs;
``tests/test_eval_metrics.py`` runs every metric test on both engines). Cost: O(n_db log n_db)
per query and a few (rows, n_db) arrays, so they are only for small inputs.
"""

from __future__ import annotations

import numpy as np


def distances(qw: np.ndarray, dbT: np.ndarray, out: np.ndarray) -> None:
    """Hamming distances of code words ``qw`` (rows, nw) to ``dbT`` (nw, ndb) into ``out``."""
    acc = np.bitwise_count(qw[:, 0, None] ^ dbT[0][None, :]).astype(out.dtype, copy=False)
    for w in range(1, qw.shape[1]):
        acc += np.bitwise_count(qw[:, w, None] ^ dbT[w][None, :])
    out[...] = acc


def relevance(qlw: np.ndarray, dblw: np.ndarray) -> np.ndarray:
    """(rows, ndb) bool: query i and database item j share a label (label words, see words.py)."""
    rel = (qlw[:, 0, None] & dblw[None, :, 0]) != 0
    for w in range(1, qlw.shape[1]):
        rel |= (qlw[:, w, None] & dblw[None, :, w]) != 0
    return rel


def ranked_stats(rel: np.ndarray, dist: np.ndarray, n_values: int, ap_ks: np.ndarray, pk: np.ndarray,
                 ap_all: np.ndarray, ap_k: np.ndarray, hits: np.ndarray, counts: np.ndarray | None) -> None:
    """Per row: AP@all, AP@k for each k of ``ap_ks``, the relevant items within the top K for each K
    of ``pk`` (both ascending, at most ndb), and, when ``counts`` (rows, n_values, 2) is given, the
    irrelevant and relevant items at each distance. Definitions as in :mod:`pipeline.eval.metrics`."""
    r, ndb = dist.shape
    order = np.argsort(dist, axis=1, kind="stable")  # ties by ascending database index (a radix sort)
    order += (ndb * np.arange(r, dtype=order.dtype))[:, None]
    ranked = rel.ravel()[order]  # relevance in ranked order
    cum = np.cumsum(ranked, axis=1, dtype=np.int32)  # relevant items within the top p + 1
    inv = 1.0 / np.arange(1, ndb + 1, dtype=np.float64)
    at_rel = np.multiply(cum, ranked, dtype=np.float64)  # m at the m-th relevant rank, else 0
    n_rel = cum[:, -1]
    ap_all[...] = np.where(n_rel > 0, np.einsum("ij,j->i", at_rel, inv) / np.maximum(n_rel, 1), 0.0)
    for j, k in enumerate(ap_ks.tolist()):
        h = cum[:, k - 1]
        ap_k[:, j] = np.where(h > 0, np.einsum("ij,j->i", at_rel[:, :k], inv[:k]) / np.maximum(h, 1), 0.0)
    if pk.size:
        hits[...] = cum[:, pk - 1]
    if counts is not None:  # key 2 * distance + relevant, offset per row, counted in one bincount
        key = np.left_shift(dist, 1, dtype=np.int32)
        key += rel
        key += (2 * n_values * np.arange(r, dtype=np.int32))[:, None]
        counts[...] = np.bincount(key.ravel(), minlength=2 * n_values * r).reshape(r, n_values, 2)


def pair_ranks(dist: np.ndarray, pair: np.ndarray, out: np.ndarray) -> None:
    """0-based rank of database row ``pair[i]`` in row i of ``dist`` (the items before it: closer,
    or as close with a smaller index); -1 where ``pair[i] < 0``."""
    r, ndb = dist.shape
    ok = pair >= 0
    p = np.where(ok, pair, 0)
    dp = dist[np.arange(r), p][:, None]
    before = np.count_nonzero(dist < dp, axis=1)
    before += np.count_nonzero((dist == dp) & (np.arange(ndb)[None, :] < p[:, None]), axis=1)
    out[...] = np.where(ok, before, -1)
