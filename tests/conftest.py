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
