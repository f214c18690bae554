"""The ``codes.h5`` contract between whoever makes hash codes and the evaluation.

Datasets ``query_image``, ``query_text``, ``db_image``, ``db_text``: rows of
``numpy.packbits(bits01, axis=1)`` (uint8, default big bit order, zero padding bits);
``query_labels``, ``db_labels``: n x c uint8 multi-hot (c = 0 for a collection without labels,
evaluated paired: row i of the query images and row i of the query texts are one pair); optional ``query_ids``, ``db_ids``
(variable-length strings); optional group ``real`` with the same four names: the method's
continuous embeddings before binarisation (float32; a linear method's projections), from which
evaluation reports the cost of hashing (cosine ranking in that space). Attribute ``bits`` is the code length; any other attributes are
provenance. Packing keeps files 8x smaller and lets the ranking XOR whole words.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import h5_output, open_h5, write_strings

CODE_SETS = ("query_image", "query_text", "db_image", "db_text")
LABEL_SETS = ("query_labels", "db_labels")


def pack_bits(bits01: np.ndarray) -> np.ndarray:
    """Pack an (n, bits) 0/1 array into (n, ceil(bits/8)) uint8 rows (``np.packbits`` order)."""
    a = np.asarray(bits01)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise PipelineError(f"codes must be a 2-D (n, bits) array, got shape {a.shape}")
    if a.dtype != np.bool_:
        if not _is01(a):
            raise PipelineError("codes must contain only 0/1 values")
        a = a.astype(bool)
    return np.packbits(a, axis=1)


def _is01(a: np.ndarray) -> bool:
    """True when every entry is 0 or 1 (linear time, no sort)."""
    if a.dtype == np.bool_ or a.size == 0:
        return True
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        return False
    return bool(((a == 0) | (a == 1)).all())


def unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: (n, bits) uint8 0/1."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1, count=int(bits))


@dataclass
class Codes:
    """Packed codes and labels of one ``codes.h5`` (validated by :func:`read_codes`)."""

    query_image: np.ndarray
    query_text: np.ndarray
    db_image: np.ndarray
    db_text: np.ndarray
    query_labels: np.ndarray
    db_labels: np.ndarray
    bits: int
    query_ids: np.ndarray | None = None
    db_ids: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    real: dict[str, np.ndarray] | None = None  # continuous embeddings, CODE_SETS -> (n, d) float32

    @property
    def n_query(self) -> int:
        return int(self.query_image.shape[0])

    @property
    def n_db(self) -> int:
        return int(self.db_image.shape[0])

    @property
    def labelled(self) -> bool:
        """Whether the codes carry labels (classes); without, only the paired metrics apply."""
        return int(self.query_labels.shape[1]) > 0

    @property
    def width(self) -> int:
        """Bytes per packed code."""
        return int(self.query_image.shape[1])


def _attr_value(v: Any) -> Any:
    """HDF5 attributes hold scalars and strings; store dicts/lists as JSON text."""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, Path):
        return str(v)
    return v


def write_codes(path: str | os.PathLike, *, query_image: np.ndarray, query_text: np.ndarray,
                db_image: np.ndarray, db_text: np.ndarray, query_labels: np.ndarray,
                db_labels: np.ndarray, bits: int, attrs: dict | None = None,
                query_ids: Sequence[str] | None = None, db_ids: Sequence[str] | None = None,
                real: dict[str, np.ndarray] | None = None) -> None:
    """Write ``codes.h5`` atomically from UNPACKED (n, bits) 0/1 code arrays.

    The same checks as :func:`read_codes` run before anything is written, so a file that
    lands on disk always reads back.
    """
    bits = int(bits)
    data: dict[str, np.ndarray] = {}
    for name, a in (("query_image", query_image), ("query_text", query_text),
                    ("db_image", db_image), ("db_text", db_text)):
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[1] != bits:
            raise PipelineError(f"{path}: {name} must have shape (n, {bits}), got {a.shape}")
        data[name] = pack_bits(a)
    data["query_labels"] = np.asarray(query_labels)
    data["db_labels"] = np.asarray(db_labels)
    ids = {"query_ids": None if query_ids is None else np.array([str(s) for s in query_ids], dtype=object),
           "db_ids": None if db_ids is None else np.array([str(s) for s in db_ids], dtype=object)}
    _validate(data, ids, bits, str(path))
    if real is not None:
        for name in CODE_SETS:
            r = np.asarray(real[name])
            if r.ndim != 2 or len(r) != len(data[name]) or not np.isfinite(r).all():
                raise PipelineError(f"{path}: real-valued {name} must be a finite (n, d) array of {len(data[name])} rows")
    with h5_output(path) as f:
        for name in CODE_SETS:
            f.create_dataset(name, data=data[name])
        for name in LABEL_SETS:
            f.create_dataset(name, data=data[name].astype(np.uint8))
        for name, v in ids.items():
            if v is not None:
                write_strings(f, name, v)
        f.attrs["bits"] = bits
        if real is not None:
            g = f.create_group("real")
            for name in CODE_SETS:
                g.create_dataset(name, data=np.asarray(real[name], dtype=np.float32))
        for k, v in (attrs or {}).items():
            if k != "bits" and v is not None:
                f.attrs[k] = _attr_value(v)


def read_codes(path: str | os.PathLike) -> Codes:
    """Read and validate ``codes.h5``; any violation of the contract is one clear PipelineError."""
    path = Path(path)
    with open_h5(path, "codes file") as f:
        data: dict[str, np.ndarray] = {}
        for name in CODE_SETS + LABEL_SETS:
            if name not in f:
                raise PipelineError(f"{path}: missing dataset '{name}'")
            if not isinstance(f[name], h5py.Dataset):
                raise PipelineError(f"{path}: '{name}' is not a dataset")
            data[name] = f[name][()]
        ids = {name: (f[name].asstr()[()] if name in f else None) for name in ("query_ids", "db_ids")}
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        real = ({name: f["real"][name][()] for name in CODE_SETS} if "real" in f and
                all(name in f["real"] for name in CODE_SETS) else None)
    bits = _validate(data, ids, attrs.get("bits"), str(path))
    attrs["bits"] = bits
    return Codes(
        query_image=data["query_image"], query_text=data["query_text"],
        db_image=data["db_image"], db_text=data["db_text"],
        query_labels=data["query_labels"].astype(np.uint8, copy=False),
        db_labels=data["db_labels"].astype(np.uint8, copy=False),
        bits=bits, query_ids=ids["query_ids"], db_ids=ids["db_ids"], attrs=attrs, real=real,
    )


def _validate(data: dict[str, np.ndarray], ids: dict[str, np.ndarray | None], bits: Any, where: str) -> int:
    """Check the contract on packed codes, labels and ids; return the code length in bits."""
    def fail(msg: str) -> PipelineError:
        return PipelineError(f"{where}: {msg}")

    for name in CODE_SETS:
        a = data[name]
        if a.ndim != 2 or a.dtype != np.uint8:
            raise fail(f"'{name}' must be a 2-D uint8 array of packed codes, got {a.dtype} {a.shape}")
    widths = {name: data[name].shape[1] for name in CODE_SETS}
    if len(set(widths.values())) != 1:
        raise fail("codes have different byte widths: " + ", ".join(f"{k}={v}" for k, v in widths.items()))
    width = widths["query_image"]
    if width == 0:
        raise fail("codes have zero width")
    # Unpacked 0/1 codes (one byte per bit) pass every shape check and would be scored as 8x longer
    # codes. Packed real codes whose every byte is 0 or 1 need 7 of every 8 bits constant 0 while
    # the 8th varies: not a code any method produces. All-zero codes (a collapsed model) are allowed.
    if width >= 2 and not any((data[n] > 1).any() for n in CODE_SETS) and any((data[n] == 1).any() for n in CODE_SETS):
        raise fail(f"every byte of the codes is 0 or 1: these look like unpacked 0/1 codes (one byte per bit, "
                   f"{width} bytes a row) rather than numpy.packbits(codes, axis=1); pack them and set the "
                   "attribute bits")
    for side in ("query", "db"):
        n_img, n_txt = data[f"{side}_image"].shape[0], data[f"{side}_text"].shape[0]
        if n_img != n_txt:
            raise fail(f"{side}_image has {n_img} rows but {side}_text has {n_txt}")
        if n_img == 0:
            raise fail(f"empty {'query set' if side == 'query' else 'database'} (0 rows)")
        lab = data[f"{side}_labels"]
        if lab.ndim != 2:
            raise fail(f"'{side}_labels' must be 2-D (n, classes), got shape {lab.shape}")
        if lab.shape[0] != n_img:
            raise fail(f"{side}_labels has {lab.shape[0]} rows but {side} codes have {n_img}")
        if not _is01(lab):
            raise fail(f"{side}_labels must be 0/1 multi-hot")
        ids_side = ids.get(f"{side}_ids")
        if ids_side is not None and len(ids_side) != n_img:
            raise fail(f"{side}_ids has {len(ids_side)} entries but {side} codes have {n_img}")
    cq, cd = data["query_labels"].shape[1], data["db_labels"].shape[1]
    if cq != cd:
        raise fail(f"query_labels has {cq} classes but db_labels has {cd}")
    if bits is None:
        bits = 8 * width
    else:
        try:
            bits = int(bits)
        except (TypeError, ValueError):
            raise fail(f"attribute bits={bits!r} is not an integer") from None
        if bits < 1 or (bits + 7) // 8 != width:
            raise fail(f"attribute bits={bits} does not fit codes of {width} bytes")
    pad = 8 * width - bits
    if pad:
        mask = np.uint8((1 << pad) - 1)  # packbits leaves the low bits of the last byte as padding
        for name in CODE_SETS:
            if np.any(data[name][:, -1] & mask):
                raise fail(f"'{name}' has non-zero padding bits beyond bit {bits}")
    return bits
