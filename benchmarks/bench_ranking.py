#!/usr/bin/env python
"""Benchmark: exact stable top-k Hamming ranking + mAP@k vs a peers-style per-query loop.

    python benchmarks/bench_ranking.py                      # 5,000 x 117,000, 64 bits, k=1000
    python benchmarks/bench_ranking.py --big                # 5,000 x 1,000,000 (memory run)
    python benchmarks/bench_ranking.py --threads 2 --full   # + the full pass (mAP@all, PR)

Random codes and labels (24 classes, each present with probability 0.1, so ~22% of the
database is relevant to a query). The naive baseline
is the usual ``calc_map_k``: for each query, distances ``0.5 * (bits - b_q @ B_db.T)`` on
+/-1 float codes, a full ``np.argsort`` and the AP loop; it is timed on a subset of queries
and extrapolated linearly (it is per-query, so linear is exact up to noise).
Peak memory is the process's maximum resident set size (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.eval.metrics import rank_metrics  # noqa: E402


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def naive_map_k(qb: np.ndarray, rb: np.ndarray, ql: np.ndarray, rl: np.ndarray, k: int) -> float:
    """Peers' calc_map_k (DCMH and descendants), restricted to relevant items within the top k."""
    bits = qb.shape[1]
    total = 0.0
    for i in range(qb.shape[0]):
        gnd = (ql[i] @ rl.T > 0).astype(np.float32)
        hamm = 0.5 * (bits - qb[i] @ rb.T)
        ind = np.argsort(hamm)  # unstable: tie order is implementation-defined
        gnd = gnd[ind][:k]
        tsum = int(gnd.sum())
        if tsum == 0:
            continue
        count = np.arange(1, tsum + 1, dtype=np.float64)
        tindex = np.nonzero(gnd)[0] + 1.0
        total += float(np.mean(count / tindex))
    return total / qb.shape[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nq", type=int, default=5000)
    ap.add_argument("--ndb", type=int, default=117000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--big", action="store_true", help="1,000,000-item database (memory run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--naive-queries", type=int, default=200, help="queries timed for the naive loop")
    ap.add_argument("--full", action="store_true", help="also time the full pass (mAP@all, P@K, PR)")
    ap.add_argument("--full-queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.big:
        a.ndb = 1_000_000
        a.naive_queries = min(a.naive_queries, 50)

    rng = np.random.default_rng(a.seed)
    width, pad = (a.bits + 7) // 8, -a.bits % 8
    keep = np.uint8((0xFF << pad) & 0xFF)  # uniform random packed codes, padding bits zero
    q = rng.integers(0, 256, (a.nq, width), dtype=np.uint8)
    q[:, -1] &= keep
    db = rng.integers(0, 256, (a.ndb, width), dtype=np.uint8)
    db[:, -1] &= keep
    ql = (rng.integers(0, 10, (a.nq, 24), dtype=np.uint8) == 0).view(np.uint8)
    dbl = (rng.integers(0, 10, (a.ndb, 24), dtype=np.uint8) == 0).view(np.uint8)
    print(f"nq={a.nq} ndb={a.ndb} bits={a.bits} k={a.k} threads={a.threads} cpus={os.cpu_count()} "
          f"numpy={np.__version__}")
    rss0 = rss_mib()

    t0, c0 = time.perf_counter(), time.process_time()
    m = rank_metrics(q, db, ql, dbl, map_ks=[a.k], n_threads=a.threads)
    fast_s, fast_cpu = time.perf_counter() - t0, time.process_time() - c0
    fast_map = float(m["ap"][min(a.k, a.ndb)].mean())
    rss1 = rss_mib()
    print(f"fast  exact stable top-{a.k} + mAP@{a.k}: {fast_s:.3f} s wall, {fast_cpu:.3f} s CPU, "
          f"mAP={fast_map:.6f}")
    print(f"peak RSS: {rss1:.0f} MiB (data and interpreter before the run: {rss0:.0f} MiB)")

    if a.full:
        nf = min(a.full_queries, a.nq)
        t0, c0 = time.perf_counter(), time.process_time()
        rank_metrics(q[:nf], db, ql[:nf], dbl, map_ks=[a.k, None, 50], pk=list(range(100, 5001, 100)),
                     pr_bits=a.bits, n_threads=a.threads)
        full_s, full_cpu = (time.perf_counter() - t0) * a.nq / nf, (time.process_time() - c0) * a.nq / nf
        print(f"full pass (mAP@{a.k}, mAP@all, mAP@50, P@K, PR) per task: {full_s:.2f} s wall, "
              f"{full_cpu:.2f} s CPU (timed on {nf} queries, extrapolated to {a.nq}); "
              f"peak RSS {rss_mib():.0f} MiB")

    nn = min(a.naive_queries, a.nq)
    qb = (np.unpackbits(q[:nn], axis=1)[:, : a.bits].astype(np.float32) * 2 - 1)
    rb = (np.unpackbits(db, axis=1)[:, : a.bits].astype(np.float32) * 2 - 1)
    t0 = time.perf_counter()
    naive_sub = naive_map_k(qb, rb, ql[:nn].astype(np.float32), dbl.astype(np.float32), a.k)
    naive_s = (time.perf_counter() - t0) * a.nq / nn
    ours_sub = float(m["ap"][min(a.k, a.ndb)][:nn].mean())
    print(f"naive per-query loop (calc_map_k style): {naive_s:.1f} s "
          f"(timed on {nn} queries, extrapolated linearly to {a.nq})")
    print(f"  on those {nn} queries: naive mAP={naive_sub:.6f}, ours={ours_sub:.6f} "
          f"(differences come only from the naive loop's arbitrary tie order)")
    print(f"speed-up: {naive_s / fast_s:.0f}x")


if __name__ == "__main__":
    main()
