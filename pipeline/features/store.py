"""``features.h5``: the contract between extraction and training.

Datasets: ``image`` (n x d_x float32), ``text`` (n x d_y float32), ``labels`` (n x c uint8),
``query``/``database``/``train`` (int64 row indices), ``ids`` (strings). Optional ``tag_vocab`` (strings; text = tag vectors over it) and group
``image_pca`` (``components``, ``mean``, ``explained_variance_ratio``) so that new images can be
projected the same way. Attribute ``provenance`` (JSON: config, models and weights, code version,
seed, source checksums).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import (check_unique_ids, h5_output, open_h5, read_arrays, read_attrs, read_strings, write_arrays,
                         write_strings)

SPLITS = ("query", "database", "train")


@dataclass
class Features:
    """The arrays of a features file, validated."""

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    query: np.ndarray
    database: np.ndarray
    train: np.ndarray
    ids: np.ndarray
    attrs: dict = field(default_factory=dict)
    pca: dict | None = None
    tag_vocab: list[str] | None = None

    @property
    def n(self) -> int:
        return len(self.image)


def check_arrays(image: np.ndarray, text: np.ndarray, labels: np.ndarray, where: str) -> None:
    """Shapes agree, values are finite, labels are 0/1: else one line naming the problem."""
    if image.ndim != 2 or text.ndim != 2 or labels.ndim != 2:
        raise PipelineError(f"{where}: image, text and labels must be 2-D, got shapes "
                            f"{image.shape}, {text.shape}, {labels.shape}")
    if not len(image) == len(text) == len(labels):
        raise PipelineError(f"{where}: row counts differ: image {len(image)}, text {len(text)}, "
                            f"labels {len(labels)}")
    if len(image) == 0:
        raise PipelineError(f"{where}: no rows")
    for name, a in (("image", image), ("text", text)):
        bad = ~np.isfinite(a).all(axis=1)
        if bad.any():
            raise PipelineError(f"{where}: {name} has NaN/inf in {int(bad.sum())} rows (first row {int(np.argmax(bad))})")
    if not np.isin(labels, (0, 1)).all():
        raise PipelineError(f"{where}: labels must be multi-hot 0/1")


def check_splits(splits: dict[str, np.ndarray], n: int, where: str, allow_overlap: bool = False) -> None:
    """Splits are 1-D, non-empty, inside 0..n-1 without repeats, and honest: no query is in the
    database or among the training pairs (a query found in the database, or a model trained on
    its own queries, inflates every number). ``allow_overlap`` permits both, recorded in the
    features' provenance by whoever asks for it."""
    for s in SPLITS:
        idx = np.asarray(splits[s])
        if idx.ndim != 1 or len(idx) == 0:
            raise PipelineError(f"{where}: split '{s}' is empty or not 1-D")
        if idx.min() < 0 or idx.max() >= n:
            raise PipelineError(f"{where}: split '{s}' has indices outside 0..{n - 1}")
        if len(np.unique(idx)) != len(idx):
            raise PipelineError(f"{where}: split '{s}' lists a row twice")
    if allow_overlap:
        return
    for other in ("database", "train"):
        both = np.intersect1d(splits["query"], splits[other])
        if len(both):
            raise PipelineError(f"{where}: {len(both)} query row(s) are also in the {other} split (first row "
                                f"{int(both[0])}): queries must be held out; set allow_overlap: true to accept this "
                                "on purpose (it is recorded in the provenance)")


def write_features(path: str | Path, *, image: np.ndarray, text: np.ndarray, labels: np.ndarray,
                   splits: dict[str, np.ndarray], ids: list[str] | np.ndarray,
                   provenance: dict, pca: dict | None = None, tag_vocab: list[str] | None = None) -> None:
    """Validate and write a features file atomically."""
    check_arrays(image, text, labels, str(path))
    ids = [str(v) for v in ids]
    if len(ids) != len(image):
        raise PipelineError(f"{path}: {len(ids)} ids for {len(image)} rows")
    check_unique_ids(ids, str(path))
    check_splits(splits, len(image), str(path), bool(provenance.get("allow_overlap")))
    if "validation" in splits:
        v = np.asarray(splits["validation"])
        for other in ("query", "database", "train"):
            if len(np.intersect1d(v, splits[other])):
                raise PipelineError(f"{path}: validation pairs are also in the {other} split")
    with h5_output(path) as f:
        f.create_dataset("image", data=image.astype(np.float32))
        f.create_dataset("text", data=text.astype(np.float32))
        f.create_dataset("labels", data=labels.astype(np.uint8))
        for s in SPLITS:
            f.create_dataset(s, data=np.asarray(splits[s], dtype=np.int64))
        if "validation" in splits:  # a protocol's held-out validation pairs (LDR's, Table VII)
            f.create_dataset("validation", data=np.asarray(splits["validation"], dtype=np.int64))
        write_strings(f, "ids", ids)
        if tag_vocab is not None:
            write_strings(f, "tag_vocab", tag_vocab)
        if pca is not None:
            write_arrays(f, "image_pca", pca)
        f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        for key in ("dataset", "seed"):
            if key in provenance:
                f.attrs[key] = provenance[key]


def provenance_of(attrs: dict) -> dict:
    """The ``provenance`` attribute of a features file as a dict ({} when absent or unreadable)."""
    raw = attrs.get("provenance")
    try:
        d = json.loads(raw) if isinstance(raw, (str, bytes)) else {}
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def read_features(path: str | Path) -> Features:
    """Read and validate a features file (any producer), with one-line errors."""
    path = Path(path)
    with open_h5(path, "features file") as f:
        for key in ("image", "text", "labels", *SPLITS):
            if key not in f:
                raise PipelineError(f"{path}: missing dataset '{key}'")
        image, text, labels = f["image"][()], f["text"][()], f["labels"][()]
        splits = {s: f[s][()].astype(np.int64) for s in SPLITS}
        ids = np.array(read_strings(f, "ids") or [str(i) for i in range(len(image))])
        attrs = read_attrs(f)
        pca = read_arrays(f, "image_pca")
        vocab = read_strings(f, "tag_vocab")
    check_arrays(image, text, labels, str(path))
    if len(ids) != len(image):
        raise PipelineError(f"{path}: {len(ids)} ids for {len(image)} rows")
    check_unique_ids(ids, str(path))
    check_splits(splits, len(image), str(path), bool(provenance_of(attrs).get("allow_overlap")))
    return Features(image=image, text=text, labels=labels, ids=ids, attrs=attrs, pca=pca, tag_vocab=vocab,
                    **splits)
