#!/usr/bin/env python
"""Benchmark: the `evaluate` stage as users run it, whole process, on an MS-COCO-sized codes.h5.

    python benchmarks/bench_evaluate.py                 # 5,000 x 117,000, 64 bits, 80 classes
    python benchmarks/bench_evaluate.py --skip-today    # without today's (slow) stage
    python benchmarks/bench_evaluate.py --nq 500 --ndb 20000   # a quick run

Every figure comes from one run of this script, with its anchor:

* ours, as the pipeline runs it: ``cmimh evaluate codes.h5 --chance chance.json -o metrics.json
  --threads T`` in a subprocess (every metric: mAP@1000, mAP@all, mAP@50, Pre@100, the P@K curve,
  PR by radius for the four tasks, RecallOne@K, the paired metrics; the chance level read from the
  file of the ``chance`` rule, which runs once per data set and code length for all methods:
  ``cmimh chance`` is timed as a process too), after one warm-up run on a tiny file so that the
  numba kernels are compiled and cached (the first run on a machine compiles them; that time is
  printed too), ``--repeat`` times (the machine is shared: the median run is the one compared); ours
  with ``CMIMH_SIMD=0``, the scalar kernels that CPUs without AVX-512 VBMI2 run (when this one has
  it); and ours without a chance file (the chance level computed in the same process, as today's
  stage did), the like-for-like comparison with anchor 1;
* anchor 1, today's stage: the same command from the commit before the counting core
  (``git archive`` of ``--today-rev`` into a temporary folder), same file, same threads; its
  metrics.json must equal ours to 1e-9 (checked and printed);
* anchor 2, a peer-style loop: per query, Hamming distances from +/-1 codes, a full
  ``np.argsort`` (stable, so its numbers are ours), then mAP@all, mAP@1000, mAP@50, P@K and PR;
  timed on ``--peer-queries`` queries of one task and extrapolated linearly to the four tasks.

* where the metrics' time goes: in this process, one thread, the first ``--parts-queries`` queries
  of the four tasks through the same call as the stage, each compiled kernel timed (relevance,
  keys, the key histogram, the counting sort with the APs), in nanoseconds a (task, query, item)
  pair and scaled to the whole file; RecallOne@K's pair ranks likewise.

Wall time, CPU time (user + system of the subprocess, from ``wait4``) and peak RSS are printed for
each, with the load average before and after and the hypervisor's steal during each process (the
machine is shared: CPU time is the steadier figure; :mod:`benchmarks.steal`). Random codes
(uniform bits: many ties, ~1,800 items per distance value) and random labels with MS-COCO-like
class frequencies (the most common class in ~45% of items).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.steal import Steal  # noqa: E402
from pipeline.eval.codes import write_codes  # noqa: E402


def make_codes(path: Path, nq: int, ndb: int, bits: int, classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.minimum(0.45, 0.5 / (np.arange(classes) + 1.0) ** 0.75)  # class frequencies, decreasing
    ql = (rng.random((nq, classes)) < p).astype(np.uint8)
    dl = (rng.random((ndb, classes)) < p).astype(np.uint8)
    code = lambda n: rng.integers(0, 2, (n, bits), dtype=np.uint8)  # noqa: E731
    write_codes(path, query_image=code(nq), query_text=code(nq), db_image=code(ndb), db_text=code(ndb),
                query_labels=ql, db_labels=dl, bits=bits)


def make_features(path: Path, codes: Path) -> None:
    """A features.h5 whose split has the codes' labels (queries first, then the database), so that
    `cmimh chance` computes the chance level of exactly these queries and database."""
    import h5py

    from pipeline.eval.codes import read_codes
    from pipeline.stages import extract

    c = read_codes(codes)
    nq, ndb = c.n_query, c.n_db
    src = path.with_name("features_src.h5")
    with h5py.File(src, "w") as f:
        f["image"] = np.zeros((nq + ndb, 2), np.float32)
        f["text"] = np.zeros((nq + ndb, 2), np.float32)
        f["labels"] = np.concatenate([c.query_labels, c.db_labels]).astype(np.uint8)
        f["query"] = np.arange(nq)
        f["database"] = np.arange(nq, nq + ndb)
        f["train"] = np.arange(nq, nq + ndb)
    extract.run_import(src, {"dataset": "bench", "seed": 0}, path)


def run_stage(pythonpath: Path, codes: Path, out: Path, threads: int, extra: tuple[str, ...] = (),
              command: str = "evaluate", env_extra: dict[str, str] | None = None) -> dict:
    """One `cmimh evaluate` (or `cmimh chance`, ``codes`` = None) process: wall, CPU (user + sys)
    and peak RSS from wait4, and the hypervisor's steal meanwhile (:mod:`benchmarks.steal`).
    ``env_extra``: variables set for that process only (this process's environment, and so the
    user's own settings for the other runs, stay as they are)."""
    env = {**os.environ, **(env_extra or {}), "PYTHONPATH": str(pythonpath)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as users run it: with Python's bytecode caches
    cmd = [sys.executable, "-m", "pipeline.cli", command, *([str(codes)] if codes else []), "-o", str(out),
           "--threads", str(threads), *extra]
    t0 = time.perf_counter()
    with Steal() as steal:
        # cwd = the code's folder: `python -m` puts the working directory first on sys.path
        proc = subprocess.Popen(cmd, env=env, cwd=str(pythonpath), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-500:]}")
    m = json.loads(out.read_text())
    rev = m.get("provenance", {}).get("code_version", "?")
    return {"rev": rev, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_mib": ru.ru_maxrss / 1024, "metrics": m,
            "steal": str(steal)}


def same(a, b, path: str = "", tol: float = 1e-9) -> list[str]:
    """Paths where the two metrics.json differ (timings and provenance aside)."""
    bad = []
    if isinstance(a, dict):
        for k in a:
            if k in ("seconds", "provenance"):
                continue
            if not isinstance(b, dict) or k not in b:
                bad.append(f"{path}/{k} missing")
            else:
                bad += same(a[k], b[k], f"{path}/{k}", tol)
    elif isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [f"{path} length"]
        for i, (x, y) in enumerate(zip(a, b)):
            bad += same(x, y, f"{path}[{i}]", tol)
    elif isinstance(a, float):
        if not isinstance(b, (int, float)) or abs(a - b) > tol:
            bad.append(f"{path}: {a} vs {b}")
    elif a != b:
        bad.append(f"{path}: {a!r} vs {b!r}")
    return bad


def peer_loop(codes_path: Path, n: int, pk: list[int]) -> tuple[float, float]:
    """A peer-style per-query loop (one task), all metrics: (wall, CPU) seconds for ``n`` queries."""
    from pipeline.eval.codes import read_codes

    c = read_codes(codes_path)
    bits = c.bits
    qb = np.unpackbits(c.query_image[:n], axis=1)[:, :bits].astype(np.float32) * 2 - 1
    rb = np.unpackbits(c.db_text, axis=1)[:, :bits].astype(np.float32) * 2 - 1
    ql, rl = c.query_labels[:n].astype(np.float32), c.db_labels.astype(np.float32)
    pk_arr = np.array(pk)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        gnd = (ql[i] @ rl.T > 0)
        hamm = 0.5 * (bits - qb[i] @ rb.T)
        ind = np.argsort(hamm, kind="stable")
        g = gnd[ind]
        f = np.flatnonzero(g) + 1.0
        prec = np.arange(1, f.size + 1) / f
        _ = prec.mean() if f.size else 0.0  # mAP@all
        for k in (1000, 50):
            m = np.searchsorted(f, k, side="right")
            _ = prec[:m].mean() if m else 0.0
        _ = np.cumsum(g)[pk_arr - 1] / pk_arr  # P@K
        hs = hamm[ind]
        for r in range(bits + 1):  # PR by radius
            cnt = np.searchsorted(hs, r, side="right")
            _ = (g[:cnt].sum() / cnt if cnt else 0.0, g[:cnt].sum() / max(g.sum(), 1))
    return time.perf_counter() - t0, time.process_time() - c0


def kernel_parts(codes_path: Path, n: int) -> None:
    """Print the compiled kernels' share of the metrics (one thread): the stage's own call,
    :func:`pipeline.eval.metrics.evaluate_all`, on the first ``n`` queries, with each kernel and
    its RecallOne@K part wrapped in a timer."""
    from pipeline.eval import hamming, kernels, metrics
    from pipeline.eval.codes import read_codes

    c = read_codes(codes_path)
    n = min(n, c.n_query)
    head = dataclasses.replace(c, query_image=c.query_image[:n], query_text=c.query_text[:n],
                               query_labels=c.query_labels[:n],
                               query_ids=None if c.query_ids is None else c.query_ids[:n])
    names = {"relevance": "relevance (once for the 4 tasks)", "relevance_simd": "relevance (once for the 4 tasks, AVX-512)",
             "keys": "keys (distance, relevance)",
             "key_counts": "key histogram", "ranked_stats": "counting sort + AP@all, AP@k, P@K",
             "keys_simd": "keys (AVX-512)", "ranked_stats_simd": "counting sort + AP@all, AP@k, P@K (AVX-512)",
             "pair_ranks_words": "RecallOne@K pair ranks", "pair_ranks": "RecallOne@K pair ranks (2+ words)",
             "distances": "distances (RecallOne@K, 2+ words)"}
    timed_in = {**{k: kernels for k in names}, "paired_recall_one": metrics}
    spent = dict.fromkeys(timed_in, 0.0)
    originals = {k: getattr(mod, k) for k, mod in timed_in.items()}

    def timed(name):
        f = originals[name]

        def g(*args, **kwargs):
            t = time.perf_counter()
            r = f(*args, **kwargs)
            spent[name] += time.perf_counter() - t
            return r
        return g

    engine, hamming.ENGINE = hamming.ENGINE, "compiled"  # whatever the size (the module read the variable at import)
    try:
        metrics.evaluate_all(head)  # loads the kernels
        for k, mod in timed_in.items():
            setattr(mod, k, timed(k))
        t0 = time.perf_counter()
        res = metrics.evaluate_all(head)
        total = time.perf_counter() - t0 - spent["paired_recall_one"]
    finally:
        for k, f in originals.items():
            setattr(timed_in[k], k, f)
        hamming.ENGINE = engine
    total_r = spent["paired_recall_one"]
    pairs, pairs_r = 4 * n * c.n_db, 2 * res["recall_one@k"]["n_query"] * c.n_db
    full = 4 * c.n_query * c.n_db
    print(f"where the metrics' time goes (in-process, one thread, {n} queries x 4 tasks, ns a (task, query, item) pair; "
          f"x {full / pairs:.0f} for the whole file):")
    for k, label in names.items():
        if spent[k]:
            per = spent[k] / (pairs_r if k.startswith(("pair", "distances")) else pairs) * 1e9
            print(f"  {label}: {per:.2f} ns")
    print(f"  the ranking call, all of it: {total / pairs * 1e9:.2f} ns a pair -> {total * full / pairs:.1f} CPU s for "
          f"the file; RecallOne@K (as the stage runs it): {total_r / pairs_r * 1e9:.2f} ns a pair -> {total_r:.1f} CPU s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nq", type=int, default=5000)
    ap.add_argument("--ndb", type=int, default=117000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--today-rev", default="9e0aef7", help="the commit of today's stage (before the counting core)")
    ap.add_argument("--skip-today", action="store_true")
    ap.add_argument("--peer-queries", type=int, default=100)
    ap.add_argument("--parts-queries", type=int, default=500, help="queries of the in-process kernel breakdown (0: skip)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of ours as the pipeline runs it (the median is compared)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="keep the codes and metrics files in this folder")
    ap.add_argument("--features-for", nargs=2, metavar=("FEATURES", "CODES"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.features_for:  # the helper step above
        make_features(Path(a.features_for[0]), Path(a.features_for[1]))
        return

    load0 = os.getloadavg()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    work.mkdir(parents=True, exist_ok=True)
    codes = work / "codes.h5"
    make_codes(codes, a.nq, a.ndb, a.bits, a.classes, a.seed)
    tiny = work / "tiny.h5"
    make_codes(tiny, 20, 300, a.bits, a.classes, a.seed + 1)
    print(f"codes.h5: {a.nq} queries x {a.ndb} database items x {a.bits} bits, {a.classes} classes; "
          f"threads={a.threads}, cpus={os.cpu_count()}, numpy {np.__version__}")
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} (on {os.cpu_count()} cores)")

    compiled = {"CMIMH_RANKING_ENGINE": "compiled"}  # the tiny warm-up file would otherwise rank in NumPy
    cold = run_stage(REPO, tiny, work / "tiny.json", a.threads, env_extra=compiled)  # compiles a cold cache
    warm = run_stage(REPO, tiny, work / "tiny.json", a.threads, env_extra=compiled)
    run_stage(REPO, tiny, work / "tiny.json", a.threads, env_extra={**compiled, "CMIMH_SIMD": "0"})  # timed below too
    print(f"warm-up on a tiny file: {cold['wall']:.2f} s (compiles the kernels on a machine's first run), "
          f"then {warm['wall']:.2f} s wall / {warm['cpu']:.2f} s CPU (process start, imports, cached kernels)")

    feats, chance = work / "features.h5", work / "chance.json"
    # in a child process: the import stage imports torch, and a child forked from a big parent
    # would report the parent's memory as its peak RSS
    subprocess.run([sys.executable, __file__, "--features-for", str(feats), str(codes)], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    settings = json.dumps({"dataset": "bench", "seed": 0, "eval_k": 1000, "split": "test"})
    ch = run_stage(REPO, None, chance, a.threads, ("--settings", settings, "--features", str(feats), "--bits",
                                                   str(a.bits)), command="chance")
    print(f"ours `cmimh chance` (whole process; once per data set and code length, for every method): "
          f"{ch['wall']:.2f} s wall, {ch['cpu']:.2f} s CPU, peak RSS {ch['rss_mib']:.0f} MiB")
    from pipeline.eval import kernels

    path = "AVX-512 kernels" if kernels.SIMD else "scalar kernels (no AVX-512 VBMI2, or CMIMH_SIMD=0)"
    runs = [run_stage(REPO, codes, work / "metrics_ours.json", a.threads, ("--chance", str(chance)))
            for _ in range(a.repeat)]
    for q, r in enumerate(runs, 1):
        sec = r["metrics"]["seconds"]
        print(f"ours ({r['rev']}, {path}) `cmimh evaluate --chance` (whole process, as the pipeline runs it), "
              f"run {q}/{a.repeat}: {r['wall']:.2f} s wall, {r['cpu']:.2f} s CPU, peak RSS {r['rss_mib']:.0f} MiB"
              f"{r['steal']}  [in-process: metrics {sec['metrics']:.2f} s, chance read {sec['chance']:.2f} s]")
    ours = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]  # the median run: the figure compared below
    print(f"  ours, median of {a.repeat}: {ours['wall']:.2f} s wall, {ours['cpu']:.2f} s CPU"
          + (f"  target <= 4 s: {'met' if ours['wall'] <= 4 else 'NOT met'}"
             if (a.nq, a.ndb, a.bits) == (5000, 117000, 64) else ""))
    if kernels.SIMD:  # what CPUs without AVX-512 VBMI2 run
        scalar = run_stage(REPO, codes, work / "metrics_scalar.json", a.threads, ("--chance", str(chance)),
                           env_extra={"CMIMH_SIMD": "0"})
        d = same(scalar["metrics"], ours["metrics"])
        print(f"ours with the scalar kernels (CMIMH_SIMD=0, as on CPUs without AVX-512 VBMI2): {scalar['wall']:.2f} s "
              f"wall, {scalar['cpu']:.2f} s CPU{scalar['steal']}; scalar / vector {scalar['wall'] / ours['wall']:.2f}x "
              f"wall; metrics.json equal to 1e-9: {'yes, every number' if not d else 'NO: ' + '; '.join(d[:5])}")
    alone = run_stage(REPO, codes, work / "metrics_alone.json", a.threads)
    asec = alone["metrics"]["seconds"]
    print(f"ours `cmimh evaluate` without a chance file (chance computed in the process, like today's stage): "
          f"{alone['wall']:.2f} s wall, {alone['cpu']:.2f} s CPU{alone['steal']}  [in-process: metrics {asec['metrics']:.2f} s, "
          f"chance {asec['chance']:.2f} s]")
    d = same(alone["metrics"], ours["metrics"])
    print(f"  metrics.json with and without the chance file equal to 1e-9: {'yes, every number' if not d else 'NO: ' + '; '.join(d[:5])}")

    if not a.skip_today:
        old = work / "today"
        shutil.rmtree(old, ignore_errors=True)
        old.mkdir()
        arch = subprocess.run(["git", "-C", str(REPO), "archive", a.today_rev, "pipeline"], capture_output=True,
                              check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=arch, check=True)
        today = run_stage(old, codes, work / "metrics_today.json", a.threads)
        tsec = today["metrics"]["seconds"]
        diff = same(today["metrics"], alone["metrics"])
        print(f"today's stage ({a.today_rev}: ran {today['rev']}), same command: {today['wall']:.2f} s wall, {today['cpu']:.2f} s CPU{today['steal']}, "
              f"peak RSS {today['rss_mib']:.0f} MiB  [in-process: metrics {tsec['metrics']:.2f} s, "
              f"chance {tsec['chance']:.2f} s]")
        print(f"  ratio today / ours (both computing the chance level): {today['wall'] / alone['wall']:.1f}x wall, "
              f"{today['cpu'] / alone['cpu']:.1f}x CPU; today / ours as the pipeline runs it (evaluate --chance): "
              f"{today['wall'] / ours['wall']:.1f}x wall")
        print(f"  metrics.json equal to 1e-9: {'yes, every number' if not diff else 'NO: ' + '; '.join(diff[:5])}")

    from pipeline.eval.metrics import pk_grid

    n = min(a.peer_queries, a.nq)
    pw, pc = peer_loop(codes, n, pk_grid(a.ndb))
    scale = 4 * a.nq / n
    print(f"peer-style per-query argsort loop, all metrics, 4 tasks: {pw * scale:.1f} s wall, {pc * scale:.1f} s CPU "
          f"(timed on {n} queries of one task, x{scale:.0f}; no chance level); ratio peer / ours (evaluate --chance): "
          f"{pw * scale / ours['wall']:.0f}x wall, {pc * scale / ours['cpu']:.0f}x CPU")
    if a.parts_queries:
        kernel_parts(codes, a.parts_queries)
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
