#!/usr/bin/env python
"""Benchmark: `cmimh serve` under load, where a query's time goes, and the memory at 10M items.

    python benchmarks/bench_serve.py results/demo/cmimh/16/index
    python benchmarks/bench_serve.py results/demo/cmimh/16/index --big 10000000

All in one run, on this machine's loopback only (the server is a subprocess on 127.0.0.1, a free
port; every request loop is bounded):

* the service under load: ``--clients`` concurrent clients (threads, one HTTP connection each)
  send ``--queries`` text queries (the index's own captions, shuffled) to ``GET /api/search``;
  p50 / p90 / p99 latency seen by the clients and the throughput, for each ``--workers`` (encoder
  threads per index) and ``--text-precision`` (the query encoder's arithmetic); the anchor of the
  ratios is the first of them, or ``--anchor-checkout DIR``: the service of an older checkout;
* the same load from ``wrk`` (Debian's package; skipped when it is not on PATH), a load generator
  in C: the same queries over ``--clients`` connections for as long as the Python clients took.
  On a small machine the client shares the server's cores: the Python clients' own CPU (about
  2.5 ms a query) is time the server does not get, which a user's remote clients do not take;
  wrk's is a few percent of it. Both are printed, with the server's CPU per query (from /proc);
* anchor 1: one client, one query at a time (no queueing), p50;
* anchor 2: ``cmimh search --text`` as before the service: one process per query (load included);
* where a query's time goes, in-process on the same index: the text encoder (features + the
  method's text network) against the ranking (top-k of the database codes), medians;
* with ``--big N``: an index of N random codes (the demo's model, ids, no captions) served the
  same way: the server's resident memory after loading and after queries (VmRSS / VmHWM from
  /proc), and its query latency.

The load average is printed before and after, and the hypervisor's steal during each load (the
machine is shared: :mod:`benchmarks.steal`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.steal import Steal  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(index: Path, port: int, timeout: float = 600, workers: int | None = None, text_precision: str | None = None,
          repo: Path = REPO):
    import httpx

    cmimh = str(Path(sys.executable).parent / "cmimh")
    cmd = [cmimh, "serve", str(index), "--port", str(port)] + (["--workers", str(workers)] if workers else []) \
        + (["--text-precision", text_precision] if text_precision else [])
    if not Path(cmimh).exists():
        cmd = [sys.executable, "-m", "pipeline.cli"] + cmd[1:]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"cmimh serve exited: {proc.stderr.read()[-800:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url, time.perf_counter() - t0
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("cmimh serve did not come up")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MiB."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            vals[k] = int(v.split()[0]) / 1024
    return vals.get("VmRSS", float("nan")), vals.get("VmHWM", float("nan"))


def load_test(url: str, texts: list[str], clients: int, k: int) -> tuple[np.ndarray, float, list[float], int]:
    """``clients`` threads share the queries; (latencies s, wall s, server ms, errors)."""
    import httpx

    lat: list[float] = []
    server_ms: list[float] = []
    errors = [0]
    lock = threading.Lock()
    it = iter(texts)

    def client():
        with httpx.Client(base_url=url, timeout=120) as c:
            while True:
                with lock:
                    t = next(it, None)
                if t is None:
                    return
                t0 = time.perf_counter()
                r = c.get("/api/search", params={"text": t, "k": k})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        lat.append(dt)
                        server_ms.append(r.json()["ms"])
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return np.array(lat), time.perf_counter() - t0, server_ms, errors[0]


#: wrk's script: the queries in turn (one list shared by the connections of its one thread), and
#: one JSON line at the end (latencies in microseconds).
_WRK_LUA = """paths = {%s}
i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"p50": %%.0f, "p90": %%.0f, "p99": %%.0f, "n": %%d, "errors": %%d, "us": %%.0f}\\n',
    latency:percentile(50), latency:percentile(90), latency:percentile(99), summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, summary.duration))
end
"""


def wrk_load(url: str, texts: list[str], clients: int, k: int, seconds: float) -> dict | None:
    """``wrk`` sending ``texts`` in turn over ``clients`` connections for ``seconds``: {p50, p90,
    p99 (ms), n, errors, wall (s)}; None when wrk is not on PATH."""
    import urllib.parse

    exe = shutil.which("wrk")
    if exe is None:
        return None
    paths = ",".join(json.dumps("/api/search?" + urllib.parse.urlencode({"text": t, "k": k})) for t in texts)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_LUA % paths)
    try:
        out = subprocess.run([exe, "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "120s",
                              "-s", f.name, url], capture_output=True, text=True, timeout=seconds + 180)
    finally:
        os.unlink(f.name)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary: {(out.stderr or out.stdout)[-400:]}")
    r = json.loads(line[4:])
    return {"p50": r["p50"] / 1e3, "p90": r["p90"] / 1e3, "p99": r["p99"] / 1e3, "n": r["n"], "errors": r["errors"],
            "wall": r["us"] / 1e6}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q) * 1000) if len(a) else float("nan")


def breakdown(index_path: Path, texts: list[str], k: int, reps: int = 40, text_precision: str | None = None) -> dict:
    """Medians (ms) of the text encoder and of the ranking, in-process."""
    import torch

    from pipeline.search.index import load_index, load_query_encoder, rank_codes, text_query_features

    torch.set_num_threads(1)
    ix = load_index(index_path, text_precision=text_precision)
    load_query_encoder(ix, "text")
    enc1, enc8, rank1 = [], [], []
    for i in range(reps):
        t = texts[i % len(texts)]
        t0 = time.perf_counter()
        code = ix.model.encode_text(text_query_features(ix, [t]))
        t1 = time.perf_counter()
        rank_codes(ix, code, k, "image")
        t2 = time.perf_counter()
        enc1.append(t1 - t0)
        rank1.append(t2 - t1)
        if i < reps // 4:
            t0 = time.perf_counter()
            ix.model.encode_text(text_query_features(ix, [texts[(i + j) % len(texts)] for j in range(8)]))
            enc8.append(time.perf_counter() - t0)
    return {"enc1": 1000 * np.median(enc1), "enc8": 1000 * np.median(enc8), "rank1": 1000 * np.median(rank1),
            "items": len(ix.ids)}


def big_index(src: Path, n: int, dest: Path, seed: int = 0) -> Path:
    """An index folder of ``n`` random codes with ``src``'s model, extractors and code length."""
    import h5py

    from pipeline.io import write_strings

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "model.pt", dest / "model.pt")
    meta = json.loads((src / "index.json").read_text())
    meta["media"] = None
    (dest / "index.json").write_text(json.dumps(meta))
    with h5py.File(src / "index.h5", "r") as f:
        width = f["db_image"].shape[1]
        bits = int(f.attrs["bits"])
        vocab = f["tag_vocab"][()] if "tag_vocab" in f else None
        pca = {k: f["image_pca"][k][()] for k in f["image_pca"]} if "image_pca" in f else None
    rng = np.random.default_rng(seed)
    pad = 8 * width - bits
    with h5py.File(dest / "index.h5", "w") as f:
        for name in ("db_image", "db_text"):
            ds = f.create_dataset(name, shape=(n, width), dtype=np.uint8)
            for s in range(0, n, 1 << 20):
                e = min(n, s + (1 << 20))
                c = rng.integers(0, 256, (e - s, width), dtype=np.uint8)
                c[:, -1] &= np.uint8((0xFF << pad) & 0xFF)
                ds[s:e] = c
        ids = np.char.mod("%010d", np.arange(n)).astype("S10")
        f.create_dataset("ids", data=ids)
        f.create_dataset("labels", data=np.zeros((n, 1), np.uint8))
        f.attrs["bits"] = bits
        if vocab is not None:
            write_strings(f, "tag_vocab", [v.decode() if isinstance(v, bytes) else str(v) for v in vocab])
        if pca is not None:
            g = f.create_group("image_pca")
            for k, v in pca.items():
                g.create_dataset(k, data=v)
    return dest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("index", help="an index folder with captions (the demo's: results/demo/cmimh/16/index)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--big", type=int, default=0, help="also serve an index of this many random codes")
    ap.add_argument("--big-queries", type=int, default=100)
    ap.add_argument("--only-big", action="store_true", help="skip the load test (with --big)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, min(4, os.cpu_count() or 1)],
                    help="encoder threads per index to load-test, one server each (default: 1, the "
                         "previous single worker, and the default, one per core up to 4)")
    ap.add_argument("--text-precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                    help="the text query encoder's arithmetic, one server each with every --workers "
                         "(fp32, as the demo index records, is the anchor)")
    ap.add_argument("--anchor-checkout", type=Path, default=None,
                    help="also serve from this checkout of the code (e.g. `git worktree add /tmp/old 8f5eaf9`), "
                         "its default workers and precision, first: the anchor of the ratios, in the same run")
    a = ap.parse_args(argv)
    import httpx

    from pipeline.search.index import load_index

    la = os.getloadavg()
    print(f"load average before: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (on {os.cpu_count()} cores)")
    index = Path(a.index)
    ix = load_index(index)
    if ix.captions is None:
        raise SystemExit(f"{index} records no captions (build it with encode --manifest)")
    caps = ix.captions.take(np.arange(len(ix.ids)))
    rnd = random.Random(a.seed)
    texts = [rnd.choice(caps) for _ in range(a.queries)]
    print(f"index {index}: {len(ix.ids)} items, {ix.bits} bits; {a.queries} text queries (its captions), k={a.k}")
    del ix

    p50s: dict[tuple[str, int], float] = {}
    runs = [(pr, w) for pr in dict.fromkeys(a.text_precision) for w in sorted(set(a.workers))]
    if a.anchor_checkout:
        runs.insert(0, ("anchor", 0))
    for precision, workers in ([] if a.only_big else runs):
        if precision == "anchor":
            proc, url, up = start(index, free_port(), repo=a.anchor_checkout.resolve())
            what = f"the code of {a.anchor_checkout} (its defaults)"
        else:
            proc, url, up = start(index, free_port(), workers=workers, text_precision=precision)
            what = f"--workers {workers} --text-precision {precision}"
        try:
            print(f"\ncmimh serve {what} up in {up:.1f} s (indexes and "
                  f"encoders loaded once); server RSS {rss(proc.pid)[0]:.0f} MiB")
            with httpx.Client(base_url=url, timeout=120) as c:
                for t in texts[:20]:
                    c.get("/api/search", params={"text": t, "k": a.k})
            one, w1, ms1, e1 = load_test(url, texts[:100], 1, a.k)
            print(f"1 client, one query at a time ({len(one)} queries): p50 {pct(one, 50):.1f} ms, p99 {pct(one, 99):.1f} ms, "
                  f"server's own time p50 {np.median(ms1):.1f} ms")
            c0, s0 = time.process_time(), cpu_seconds(proc.pid)
            with Steal() as st:
                lat, wall, ms, errs = load_test(url, texts, a.clients, a.k)
            own, served = time.process_time() - c0, cpu_seconds(proc.pid) - s0
            p50s[precision, workers] = pct(lat, 50)
            print(f"{a.clients} concurrent clients, {len(lat)} queries ({errs} errors): p50 {pct(lat, 50):.1f} ms, "
                  f"p90 {pct(lat, 90):.1f} ms, p99 {pct(lat, 99):.1f} ms; throughput {len(lat) / wall:.1f} queries/s "
                  f"({wall:.1f} s); server's own time p50 {np.median(ms):.1f} ms; CPU a query: server "
                  f"{1e3 * served / max(len(lat), 1):.1f} ms, Python clients {1e3 * own / max(len(lat), 1):.1f} ms{st}")
            s0 = cpu_seconds(proc.pid)
            with Steal() as st:
                w = wrk_load(url, texts, a.clients, a.k, wall)
            if w is None:
                print("  wrk: not on PATH (apt-get install wrk), its load skipped")
            else:
                print(f"  the same from wrk, {a.clients} connections, {w['n']} queries in {w['wall']:.1f} s "
                      f"({w['errors']} errors): p50 {w['p50']:.1f} ms, p90 {w['p90']:.1f} ms, p99 {w['p99']:.1f} ms; "
                      f"throughput {w['n'] / w['wall']:.1f} queries/s; server CPU a query "
                      f"{1e3 * (cpu_seconds(proc.pid) - s0) / max(w['n'], 1):.1f} ms{st}; p50 Python clients / wrk: "
                      f"{pct(lat, 50) / w['p50']:.2f}x")
            anchor = runs[0]
            print(f"  ratio p50 under load / alone: {pct(lat, 50) / pct(one, 50):.1f}x; server RSS {rss(proc.pid)[0]:.0f} MiB"
                  + (f"; p50 of the anchor / this: {p50s[anchor] / p50s[precision, workers]:.2f}x"
                     if (precision, workers) != anchor else " (the anchor)"))
        finally:
            stop(proc)

    if not a.only_big:
        t0 = time.perf_counter()
        cmimh = str(Path(sys.executable).parent / "cmimh")
        p = subprocess.run([cmimh, "search", str(index), "--text", texts[0], "-k", str(a.k)], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        once = time.perf_counter() - t0
        print(f"\nanchor: `cmimh search --text` as one process per query: {once:.2f} s "
              f"({once * 1000 / max(pct(one, 50), 1e-9):.0f}x the served p50 of one client); "
              f"{p.stderr.strip().splitlines()[-1]}")

        for precision in dict.fromkeys(a.text_precision):
            b = breakdown(index, texts, a.k, text_precision=precision)
            share = b["enc1"] / (b["enc1"] + b["rank1"])
            print(f"where a query's time goes (in-process, 1 thread, {b['items']} items, {precision}): text encoder "
                  f"{b['enc1']:.2f} ms, ranking {b['rank1']:.3f} ms: the encoder is {share:.1%} of it "
                  f"({b['enc1'] / b['rank1']:.0f}x the ranking); 8 texts in one encoder batch {b['enc8']:.2f} ms "
                  f"({b['enc8'] / 8:.2f} ms a text)")

    if a.big:
        work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
        try:
            t0 = time.perf_counter()
            big = big_index(index, a.big, work / "index")
            print(f"\n{a.big:,}-item index written in {time.perf_counter() - t0:.0f} s "
                  f"({sum(f.stat().st_size for f in big.iterdir()) / 2**20:.0f} MiB on disk)")
            proc, url, up = start(big, free_port())
            try:
                r0 = rss(proc.pid)
                with httpx.Client(base_url=url, timeout=300) as c:
                    c.get("/api/search", params={"text": texts[0], "k": a.k})
                    r1 = rss(proc.pid)
                    lat_big, wall, ms, errs = load_test(url, texts[: a.big_queries], 1, a.k)
                    mid = c.get(f"/media/{0:010d}")  # the id lookup (no image recorded: 404), builds the sorted ids
                r2 = rss(proc.pid)
                print(f"served {a.big:,} items: up in {up:.1f} s; RSS after loading {r0[0]:.0f} MiB, after the first "
                      f"query {r1[0]:.0f} MiB, after {len(lat_big)} more and an id lookup ({mid.status_code}) "
                      f"{r2[0]:.0f} MiB (peak {r2[1]:.0f} MiB)")
                print(f"  1 client: p50 {pct(lat_big, 50):.1f} ms, p99 {pct(lat_big, 99):.1f} ms, "
                      f"server's own time p50 {np.median(ms):.1f} ms ({errs} errors)")
            finally:
                stop(proc)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    la = os.getloadavg()
    print(f"load average after: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


if __name__ == "__main__":
    main()
