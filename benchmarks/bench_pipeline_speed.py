#!/usr/bin/env python
"""Benchmark of issue 16's items, each before and after, measured in this one run (~1-2 minutes):

    OMP_NUM_THREADS=1 nice python benchmarks/bench_pipeline_speed.py
    python benchmarks/bench_pipeline_speed.py --threads 2 --repeats 5

1. ``cmimh evaluate`` as a whole process on a demo-sized codes.h5 (500 queries, 2,000 items, 32
   bits, 24 classes), as the pipeline runs it (``--threads 1 --chance FILE``): now = the command
   as it is (no torch; the NumPy twins of the ranking kernels, no numba); before = the issue's
   state, an interpreter that imports torch first (what recording torch's version did), ranking
   with the compiled kernels (``CMIMH_RANKING_ENGINE=compiled``) and computing the chance level in
   the process; and the previous step, no torch but the compiled kernels. Median wall time of
   ``--repeats`` runs each, after a warm-up run of each that compiles (or loads) the numba kernels
   and writes the bytecode caches (``PYTHONDONTWRITEBYTECODE`` is unset for these processes: users
   run with their caches).
2. The chance level at one code length for the demo's 5 methods: before = computed in each of the
   5 evaluates; after = computed once (``cmimh chance``) and read and checked 5 times
   (``read_chance``). Also one evaluate's share (compute vs read). Sizes: the demo's and
   ``--chance-ndb`` (closer to MS-COCO's 117,000, which takes 5-7 s a computation).
3. One optimiser step of CMIMH's Adam on the demo's networks (256-d image, 384-d text, 32 bits,
   the default widths): torch's per-tensor loop (the CPU default, before) against the fused and
   foreach implementations (after: ``optimizer_impl: auto`` picks fused). Median of 60 steps.
4. AlexNet FC7 of a batch of 64 images at the demo's 128 px, random weights: fp32 (before) against
   bf16 autocast, and bf16 + channels_last (``image_features.precision: bf16``), on ``--threads``
   torch threads. Median of ``--repeats`` batches after one warm-up.
5. One faiss query (IndexBinaryFlat, 100,000 items, 64 bits): faiss's default OpenMP threads
   (``--threads``, before) against 1 thread (after: a single query runs on one). Median of 200.

Each line prints the before and after figure and their ratio. The machine is shared: the load
average is printed before and after; CPU-bound figures wobble with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROWS: list[tuple[str, str, float, float]] = []


def report(item: str, unit: str, before: float, after: float) -> None:
    ROWS.append((item, unit, before, after))
    print(f"  {item:<58} before {before:9.2f} {unit:<3} after {after:9.2f} {unit:<3} ratio {before / after:6.2f}x",
          flush=True)


def median_time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def demo_codes(path: Path, nq: int, ndb: int, bits: int, classes: int = 24, seed: int = 0) -> None:
    from pipeline.eval.codes import write_codes

    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.02, 0.3, classes)
    ql, dl = rng.random((nq, classes)) < freq, rng.random((ndb, classes)) < freq
    ql[ql.sum(1) == 0, 0] = True
    dl[dl.sum(1) == 0, 0] = True
    write_codes(path, query_image=rng.integers(0, 2, (nq, bits)), query_text=rng.integers(0, 2, (nq, bits)),
                db_image=rng.integers(0, 2, (ndb, bits)), db_text=rng.integers(0, 2, (ndb, bits)),
                query_labels=ql, db_labels=dl, bits=bits,
                attrs={"provenance": json.dumps({"config": {"dataset": "bench"}})})


def bench_evaluate(tmp: Path, repeats: int) -> None:
    from pipeline.eval.codes import read_codes
    from pipeline.io import write_json
    from pipeline.stages.evaluate import chance_record

    codes, out, chance = tmp / "codes.h5", tmp / "metrics.json", tmp / "chance.json"
    demo_codes(codes, 500, 2000, 32)
    c = read_codes(codes)
    write_json(chance, chance_record(c, 1000, "bench"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(REPO)
    argv = ["evaluate", str(codes), "--k", "1000", "--threads", "1", "-o", str(out), "--no-progress"]
    now = [sys.executable, "-m", "pipeline.cli", *argv, "--chance", str(chance)]
    issue = [sys.executable, "-c", "import sys, torch; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))",
             *argv]

    def run(cmd, **extra):
        subprocess.run(cmd, env={**env, **extra}, cwd=REPO, check=True, capture_output=True)

    compiled = {"CMIMH_RANKING_ENGINE": "compiled"}
    for cmd, extra in ((now, {}), (now, compiled), (issue, compiled)):  # warm-up: numba's and Python's caches
        run(cmd, **extra)
    t_issue = median_time(lambda: run(issue, **compiled), repeats)
    t_prev = median_time(lambda: run(now, **compiled), repeats)
    t_now = median_time(lambda: run(now), repeats)
    report("evaluate process (demo): issue's (torch, numba, chance) vs now", "s", t_issue, t_now)
    report("evaluate process (demo): compiled kernels vs NumPy twins", "s", t_prev, t_now)


def bench_chance(tmp: Path, ndb: int, repeats: int) -> None:
    from pipeline.eval.codes import read_codes
    from pipeline.io import write_json
    from pipeline.stages.evaluate import chance_levels, chance_record, read_chance

    for nq, n in ((500, 2000), (2000, ndb)):
        path = tmp / f"chance_codes_{n}.h5"
        demo_codes(path, nq, n, 32, classes=80)
        codes = read_codes(path)
        chance_levels(codes, 1000)  # warm-up (numba)
        t_compute = median_time(lambda: chance_levels(codes, 1000), max(1, repeats // 2))
        f = tmp / f"chance_{n}.json"
        write_json(f, chance_record(codes, 1000, "bench"))
        t_read = median_time(lambda: read_chance(f, codes, 1000), repeats)
        report(f"chance, one evaluate ({nq} x {n}): computed vs read + checked", "ms", 1e3 * t_compute, 1e3 * t_read)
        report(f"chance, 5 methods x 1 length ({nq} x {n}): 5 computed vs 1 + 5 reads", "ms", 5e3 * t_compute,
               1e3 * (t_compute + 5 * t_read))


def bench_adam() -> None:
    import torch

    from pipeline.methods.cmimh import Config, _optimizers, make_networks

    torch.manual_seed(0)
    times = {}
    for impl in ("loop", "foreach", "fused"):
        c = Config.from_dict({"optimizer_impl": impl}, "bench")
        net = make_networks(256, 384, 32, c)
        opt, opt_disc = _optimizers(net, c)
        params = [p for g in opt.param_groups for p in g["params"]]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        for _ in range(5):
            opt.step()
        steps = []
        for _ in range(60):
            t = time.perf_counter()
            opt.step()
            steps.append(time.perf_counter() - t)
        times[impl] = 1e3 * statistics.median(steps)
    print(f"  (CMIMH networks: {sum(p.numel() for p in params) / 1e6:.2f} M parameters in the main optimiser)")
    report("Adam step, CMIMH demo networks: per-tensor loop vs fused", "ms", times["loop"], times["fused"])
    report("Adam step, CMIMH demo networks: per-tensor loop vs foreach", "ms", times["loop"], times["foreach"])


def bench_alexnet(threads: int, repeats: int) -> None:
    import torch

    from pipeline.features.extractors import image_extractor

    torch.set_num_threads(threads)
    x = torch.randn(64, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    rec = {"model": "alexnet", "weights": "random", "seed": 0, "input_size": 128}
    t = {}
    for name, r, cl in (("fp32", rec, False), ("bf16", {**rec, "precision": "bf16"}, False),
                        ("bf16+cl", {**rec, "precision": "bf16"}, True), ("fp32+cl", rec, True)):
        ex = image_extractor(r, channels_last=cl)
        ex.encode(x)  # warm-up
        t[name] = median_time(lambda: ex.encode(x), repeats)
    ref = image_extractor(rec).encode(x)
    b16 = image_extractor({**rec, "precision": "bf16"}).encode(x)
    rel = float(np.linalg.norm(b16 - ref) / np.linalg.norm(ref))
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        flags = []
    units = [f for f in ("avx512_bf16", "amx_bf16") if f in flags] or ["none listed"]
    print(f"  (AlexNet, 64 x 128 px, {threads} torch threads; bf16 vs fp32 features: relative L2 {rel:.2e}; "
          f"this CPU's bf16 units: {', '.join(units)})")
    report("AlexNet batch: fp32 vs bf16 autocast", "s", t["fp32"], t["bf16"])
    report("AlexNet batch: fp32 vs bf16 + channels_last", "s", t["fp32"], t["bf16+cl"])
    report("AlexNet batch: fp32 vs fp32 + channels_last", "s", t["fp32"], t["fp32+cl"])


def bench_faiss(threads: int) -> None:
    try:
        import faiss
    except ImportError:
        print("  faiss: not installed, skipped")
        return
    from pipeline.search.faiss_backend import FaissBinaryIndex

    rng = np.random.default_rng(0)
    db = np.packbits(rng.integers(0, 2, (100_000, 64), dtype=np.uint8), axis=1)
    q = np.packbits(rng.integers(0, 2, (200, 64), dtype=np.uint8), axis=1)
    index = FaissBinaryIndex(db, "flat")
    prev = faiss.omp_get_max_threads()

    def per_query(n_threads):
        faiss.omp_set_num_threads(n_threads)
        out = []
        for i in range(len(q)):
            t = time.perf_counter()
            index.index.search(q[i:i + 1], 10)  # the raw faiss call, under the thread count set here
            out.append(time.perf_counter() - t)
        return 1e3 * statistics.median(out)

    per_query(1)  # warm-up
    before, after = per_query(max(2, threads)), per_query(1)
    faiss.omp_set_num_threads(prev)
    report(f"faiss single query, 100k x 64 bits: {max(2, threads)} OpenMP threads vs 1", "ms", before, after)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the cores (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chance-ndb", type=int, default=20000)
    items = ("evaluate", "chance", "adam", "alexnet", "faiss")
    p.add_argument("--only", nargs="+", choices=items, default=list(items), help="these items only")
    a = p.parse_args()
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} cores; python {sys.version.split()[0]}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "evaluate" in a.only:
            bench_evaluate(tmp, a.repeats)
        if "chance" in a.only:
            bench_chance(tmp, a.chance_ndb, a.repeats)
    if "adam" in a.only:
        bench_adam()
    if "alexnet" in a.only:
        bench_alexnet(a.threads, a.repeats)
    if "faiss" in a.only:
        bench_faiss(a.threads)
    print(f"load average after: {os.getloadavg()}; {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
