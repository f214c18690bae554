#!/usr/bin/env python
"""Benchmark: ranking cost per query on large databases, ours vs faiss IndexBinaryFlat vs NumPy.

    python benchmarks/bench_topk.py                     # 1M and 10M random 64-bit codes
    python benchmarks/bench_topk.py --sizes 1000000 --batch 200

For each database size, k in (10, 1000), one query (median of ``--repeats`` single queries) and a
batch of ``--batch`` queries (per-query time = batch time / batch size):

* ours: :class:`pipeline.eval.hamming.Database` (exact, ties by database index), batches on
  ``--threads`` threads, one query on one;
* anchor 1, faiss ``IndexBinaryFlat.search`` (exact distances; faiss promises no order among ties),
  batches with ``--threads`` OpenMP threads, one query with one; the printed "tie rule" says on how
  many queries its ids equal ours (the distances always do);
* anchor 2, plain NumPy, exact with our tie rule: ``bitwise_count(q ^ db)``, ``argpartition`` for the
  k-th distance, a stable sort of the items within it (slow batches are timed on a subset and
  extrapolated; said so).

All in one run, with wall and CPU time (``time.process_time``, all threads) and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.eval.hamming import Database  # noqa: E402


def numpy_topk(q: np.ndarray, db64: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k with the tie rule in plain NumPy (64-bit codes as one uint64 word)."""
    out_i = np.empty((len(q), k), np.int64)
    out_d = np.empty((len(q), k), np.int64)
    for i, w in enumerate(np.ascontiguousarray(q).view(np.uint64).ravel()):
        d = np.bitwise_count(db64 ^ w)
        kth = np.partition(d, k - 1)[k - 1]
        cand = np.flatnonzero(d <= kth)
        order = cand[np.argsort(d[cand], kind="stable")][:k]
        out_i[i], out_d[i] = order, d[order]
    return out_i, out_d


def timed(fn, *args) -> tuple[float, float, object]:
    t0, c0 = time.perf_counter(), time.process_time()
    r = fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0, r


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 1000])
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--numpy-batch", type=int, default=20, help="queries of the NumPy batch actually timed")
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    faiss = None
    if not a.no_faiss:
        try:
            import faiss

            faiss.omp_set_num_threads(a.threads)
        except ImportError:
            print("faiss-cpu not installed: its column is skipped")
    la = os.getloadavg()
    print(f"64-bit random codes; threads={a.threads}, cpus={os.cpu_count()}, numpy {np.__version__}, "
          f"faiss {getattr(faiss, '__version__', '-')}; load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    rng = np.random.default_rng(a.seed)
    Database(rng.integers(0, 256, (1000, 8), dtype=np.uint8)).topk(rng.integers(0, 256, (2, 8), dtype=np.uint8), 5)
    for n in a.sizes:
        db = rng.integers(0, 256, (n, 8), dtype=np.uint8)
        qs = rng.integers(0, 256, (a.batch, 8), dtype=np.uint8)
        t0 = time.perf_counter()
        base = Database(db)
        prep = time.perf_counter() - t0
        fx = None
        if faiss is not None:
            fx = faiss.IndexBinaryFlat(64)
            fx.add(db)
        db64 = db.view(np.uint64).ravel()
        print(f"\n{n:,} items ({db.nbytes / 2**20:.0f} MiB of codes; ours prepares them in {1000 * prep:.1f} ms, "
              "no copy for 64-bit codes)")
        print(f"  {'k':>5} {'case':<12} {'ours ms/query':>16} {'faiss ms/query':>16} {'numpy ms/query':>16} "
              f"{'faiss/ours':>10} {'numpy/ours':>10}  faiss tie rule")
        for k in a.ks:
            # one query at a time: the median of several
            so, sf, sn = [], [], []
            if faiss is not None:
                faiss.omp_set_num_threads(1)  # one query: one thread each (OpenMP's wake-up costs more)
            for r in range(a.repeats):
                q1 = qs[r:r + 1]
                so.append(timed(lambda q: base.topk(q, k), q1)[:2])
                if fx is not None:
                    sf.append(timed(fx.search, q1, k)[:2])
                if r < 5:
                    sn.append(timed(numpy_topk, q1, db64, k)[:2])
            if faiss is not None:
                faiss.omp_set_num_threads(a.threads)
            med = lambda xs, i: float(np.median([x[i] for x in xs])) if xs else np.nan  # noqa: E731
            for i, what in ((0, "1 query"), (1, "  CPU")):
                mo, mf, mn = med(so, i), med(sf, i), med(sn, i)
                print(f"  {k:>5} {what:<12} {1000 * mo:>16.2f} {1000 * mf:>16.2f} {1000 * mn:>16.2f} "
                      f"{mf / mo:>10.1f} {mn / mo:>10.1f}" + ("   (median of single queries)" if i else ""))
            # a batch
            wo, co, (io_, do_) = timed(lambda q: base.topk(q, k, n_threads=a.threads), qs)
            tie = "-"
            wf = cf = np.nan
            if fx is not None:
                wf, cf, (Df, If) = timed(fx.search, qs, k)
                assert (Df == do_).all(), "faiss distances differ"
                tie = f"ids equal ours on {(If == io_).all(axis=1).mean():.0%} of queries"
            nb = min(a.numpy_batch, a.batch)
            wn, cn, (ni, nd) = timed(numpy_topk, qs[:nb], db64, k)
            assert (ni == io_[:nb]).all() and (nd == do_[:nb]).all(), "numpy differs from ours"
            per = lambda w, m: 1000 * w / m  # noqa: E731
            print(f"  {k:>5} {f'batch {a.batch}':<12} {per(wo, a.batch):>16.3f} {per(wf, a.batch):>16.3f} "
                  f"{per(wn, nb):>16.2f} {per(wf, a.batch) / per(wo, a.batch):>10.1f} "
                  f"{per(wn, nb) / per(wo, a.batch):>10.1f}  {tie}")
            print(f"  {'':>5} {'  CPU':<12} {per(co, a.batch):>16.3f} {per(cf, a.batch):>16.3f} {per(cn, nb):>16.2f}"
                  f"   (CPU ms per query, all threads; numpy timed on {nb} queries)")
        del fx, base
    la = os.getloadavg()
    print(f"\nload average after: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


if __name__ == "__main__":
    main()
