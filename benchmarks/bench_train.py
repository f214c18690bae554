"""Throughput of CMIMH training and encoding at the paper's sizes.

1,024-d image and 1,386-d text features, 64 bits, hidden 1,024, batch 100, all five loss
terms on. Prints training steps/s (and seconds per 60-epoch run on 5,000 pairs) and encoding
items/s per modality. Random features: the cost does not depend on their values.

    python benchmarks/bench_train.py [--device auto] [--steps 100] [--threads N]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from pipeline.methods.cmimh import CMIMH
from pipeline.torchkit import resolve_device


def train_cmimh(x, y, bits, settings, seed, device, progress=False):
    model = CMIMH(bits, settings)
    return model, model.fit(x, y, seed=seed, device=device, progress=progress)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=100, help="training steps to time")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--encode-rows", type=int, default=20000)
    args = ap.parse_args()
    # 100 steps on random features end near p = 1/2; the collapse warning is expected here
    warnings.filterwarnings("ignore", message="cmimh training.*collapsed")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dx, dy, batch = 1024, 1386, 100
    rng = np.random.default_rng(0)
    n = max(batch * 10, 1000)
    x = rng.normal(size=(n, dx)).astype(np.float32)
    y = (rng.random((n, dy)) < 0.01).astype(np.float32)  # sparse tag vectors like MIRFlickr
    base = {"hidden": 1024, "critic_hidden": 512, "critic_dim": 512, "disc_hidden": 512,
            "batch_size": batch}
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    train_cmimh(x, y, args.bits, dict(base, iterations=5), 0, device, progress=False)  # warm-up
    t = time.perf_counter()
    model, _ = train_cmimh(x, y, args.bits, dict(base, iterations=args.steps), 0, device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t
    sps = args.steps / sec
    print(f"train: {sps:.1f} steps/s ({args.steps} steps, batch {batch}, {args.bits} bits, all terms) "
          f"-> 60 epochs x 50 steps (5,000 pairs) ~ {3000 / sps / 60:.1f} min")

    xe = rng.normal(size=(args.encode_rows, dx)).astype(np.float32)
    ye = (rng.random((args.encode_rows, dy)) < 0.01).astype(np.float32)
    for name, fn, data in (("image", model.encode_image, xe), ("text", model.encode_text, ye)):
        fn(data[:1000])
        t = time.perf_counter()
        fn(data)
        sec = time.perf_counter() - t
        print(f"encode {name}: {args.encode_rows / sec:,.0f} items/s")


if __name__ == "__main__":
    main()
