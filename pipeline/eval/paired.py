"""Paired retrieval metrics, for collections with or without labels (the Flickr30K / MS-COCO
retrieval benchmarks' protocol, on hash codes).

The held-out set is the query split of ``codes.h5`` (drawn with the seed; a ``-val<k>`` run's
validation queries): within it, each query image ranks the held-out texts and each query text the
held-out images, and an item's only relevant item is its own pair (row i of the other modality).
Ranking is by Hamming distance, ties broken by ascending row, as everywhere in
:mod:`pipeline.eval`; the pair's 1-based rank r gives

* R@K: the fraction of queries with r <= K (K = 1, 5, 10 in the report; the curve to 100);
* the median rank (MedR) and the mean rank;
* mAP: with one relevant item a query's AP is 1/r, so mAP is the mean reciprocal rank.

``pair_map`` (``{"i2t", "t2i"}``) is the headline number of a collection without labels (the
studies and tuning score with it); ``paired`` holds everything.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.eval.hamming import Prepared, Scratch, run_chunks

RECALL_KS = (1, 5, 10)
CURVE_KS = (1, 2, 5, 10, 20, 50, 100)
PAIRED_KEY = "pair_map"
PROTOCOL = ("held-out queries only: each query image ranks the held-out texts (and each text the images); "
            "relevant = its own pair; Hamming distance, ties by row")


def pair_ranks(q_packed: np.ndarray, db_packed: np.ndarray, chunk_size: int | None = None) -> np.ndarray:
    """1-based rank of row i of ``db_packed`` in the ranking of query row i (same row counts)."""
    p = Prepared(q_packed, db_packed)
    if p.nq != p.ndb:
        raise PipelineError(f"paired ranking needs as many queries as items ({p.nq} vs {p.ndb})")
    if p.nq == 0:
        raise PipelineError("paired ranking of an empty set")
    rank = np.zeros(p.nq, dtype=np.int64)
    rows = chunk_size or max(1, (1 << 22) // max(p.ndb, 1))

    def fn(s: int, e: int, sc: Scratch) -> None:  # the own pair of query row i is database row i
        p.pair_ranks(s, e, np.arange(s, e), rank[s:e], sc)

    run_chunks(p.nq, rows, 1, fn)
    return rank + 1


def summarize(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS, curve: Sequence[int] = CURVE_KS) -> dict:
    """R@K, median and mean rank, mAP (= mean 1/rank) of 1-based ranks, plus the R@K curve."""
    r = np.asarray(ranks, dtype=np.float64)
    n = len(r)
    out = {f"r@{k}": float((r <= k).mean()) for k in ks}
    srt = np.sort(r)  # the median without np.median, whose first call imports numpy.ma (30 ms)
    median = 0.5 * (srt[(n - 1) // 2] + srt[n // 2]) if n else float("nan")
    out.update({"median_rank": float(median), "mean_rank": float(r.mean()), "map": float((1.0 / r).mean())})
    ck = [int(k) for k in curve if k <= n] or [n]
    out["curve"] = {"k": ck, "recall": [float((r <= k).mean()) for k in ck]}
    return out


def paired_metrics(codes, chunk_size: int | None = None) -> dict:
    """``{"pair_map": {i2t, t2i}, "paired": {protocol, n, i2t: {...}, t2i: {...}}}`` of a Codes."""
    out: dict = {"protocol": PROTOCOL, "n": int(codes.n_query)}
    for task, q, db in (("i2t", codes.query_image, codes.query_text), ("t2i", codes.query_text, codes.query_image)):
        out[task] = summarize(pair_ranks(q, db, chunk_size))
    return {PAIRED_KEY: {t: out[t]["map"] for t in ("i2t", "t2i")}, "paired": out}


#: The seed of the paired chance level's random codes (recorded in a chance file, checked by evaluate).
PAIRED_CHANCE_SEED = 0


def paired_chance(codes, seed: int = PAIRED_CHANCE_SEED) -> dict:
    """``{"pair_map": {i2t, t2i}}`` of uniformly random codes on the same held-out set."""
    rng = np.random.default_rng(seed)
    out = {}
    for task in ("i2t", "t2i"):
        q, db = (np.packbits(rng.integers(0, 2, (codes.n_query, codes.bits), dtype=np.uint8).astype(bool), axis=1)
                 for _ in range(2))
        out[task] = float((1.0 / pair_ranks(q, db)).mean())
    return {PAIRED_KEY: out}
