"""Shared fixtures: tiny prepared data sets and features files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# The `http_server` fixture (a local HTTP server for the download tests).
pytest_plugins = ["http_fixture"]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A 40-pair demo data set (manifest path), generated once per session."""
    from pipeline.data.demo import generate_demo

    root = tmp_path_factory.mktemp("demo")
    return generate_demo(root, n_pairs=40, seed=3, image_size=32, progress=False)


def make_features_h5(path: Path, n: int = 60, dx: int = 12, dy: int = 9, c: int = 4, seed: int = 0,
                     splits: bool = False) -> Path:
    """A user's own features file (random, labelled)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.4).astype(np.uint8)
    labels[labels.sum(1) == 0, 0] = 1
    with h5py.File(path, "w") as f:
        f["image"] = rng.normal(size=(n, dx)).astype(np.float32)
        f["text"] = rng.normal(size=(n, dy)).astype(np.float32)
        f["labels"] = labels
        if splits:
            f["query"] = np.arange(10)
            f["database"] = np.arange(10, n)
            f["train"] = np.arange(10, 40)
    return path


def write_collection(root: Path, n: int = 30, *, labels: bool = True, tags: bool = True, seed: int = 7,
                     size: int = 32, nested: bool = True, ext: str = "jpg") -> list[dict]:
    """A folder of your own in img2dataset's "files" layout, from the demo's generator: KEY.jpg +
    KEY.txt (+ KEY.json with labels and tags); nested in two sub-folders. Returns the items
    (key, path, caption, tags, labels) in key order."""
    import json

    from pipeline.data.demo import CLASSES, generate_item

    items = []
    for i in range(n):
        img, caption, tg, lab = generate_item(seed, i, size)
        sub = root / (f"part{i % 2}" if nested else "")
        sub.mkdir(parents=True, exist_ok=True)
        key = f"{'part%d/' % (i % 2) if nested else ''}img{i:04d}"
        path = sub / f"img{i:04d}.{ext}"
        img.save(path, format="PNG" if ext.lower() == "png" else "JPEG", quality=90)
        (sub / f"img{i:04d}.txt").write_text(caption, encoding="utf-8")
        meta = {}
        if labels:
            meta["labels"] = [CLASSES[c] for c in lab]
        if tags:
            meta["tags"] = tg
        if meta:
            (sub / f"img{i:04d}.json").write_text(json.dumps(meta), encoding="utf-8")
        items.append({"key": key, "path": path, "caption": caption, "tags": tg,
                      "labels": [CLASSES[c] for c in lab]})
    return sorted(items, key=lambda d: d["key"])


@pytest.fixture(params=["numpy", "compiled"])
def ranking_engine(request, monkeypatch):
    """Run a test once per ranking engine (pipeline.eval.hamming.ENGINE): the NumPy twins that
    small problems use and the compiled kernels of real sizes must give the same numbers."""
    from pipeline.eval import hamming

    monkeypatch.setattr(hamming, "ENGINE", request.param)
    return request.param
