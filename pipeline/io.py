"""Atomic output files, checksums and provenance records.

Every artifact is written to a temporary file beside its final path and renamed into place
only once complete, so a killed job never leaves a half file that looks whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline import __version__
from pipeline.errors import PipelineError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the final suffix (h5py, torch and matplotlib look at it) and
    starts with a dot so that globbing for outputs never picks up a partial file.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = final.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def to_jsonable(obj: Any) -> Any:
    """Convert NumPy scalars/arrays and paths inside ``obj`` to plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, str)):
        return str(obj)  # also plain-str subclasses such as torch's TorchVersion
    return obj


def open_h5(path: str | os.PathLike, what: str):
    """Open an HDF5 file for reading; a missing or unreadable file is one line naming ``what``."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"missing {what}: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise PipelineError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None


def write_strings(f, name: str, values) -> None:
    """A variable-length UTF-8 string dataset (ids, vocabularies)."""
    import h5py

    f.create_dataset(name, data=np.array([str(v) for v in values], dtype=object), dtype=h5py.string_dtype())


def read_strings(f, name: str) -> list[str] | None:
    """A string dataset as ``str`` (bytes decoded, numbers formatted); None when absent."""
    if name not in f:
        return None
    return [v.decode() if isinstance(v, bytes) else str(v) for v in f[name][()]]


def write_arrays(f, group: str, arrays: dict) -> None:
    """A group of named arrays (e.g. the image PCA)."""
    g = f.create_group(group)
    for k, v in arrays.items():
        g.create_dataset(k, data=v)


def read_arrays(f, group: str) -> dict | None:
    """A group of named arrays as a dict; None when absent."""
    return {k: f[group][k][()] for k in f[group]} if group in f else None


def read_attrs(obj) -> dict:
    """HDF5 attributes as plain Python values."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in obj.attrs.items()}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks (bounded memory)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
    except FileNotFoundError:
        raise PipelineError(f"missing file: {path}") from None
    return h.hexdigest()


def code_version() -> str:
    """Package version plus the git commit (with ``-dirty``) when run from a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return f"{__version__}+{rev}"


def provenance(config: dict | None = None, **extra: Any) -> dict:
    """A provenance record: code version, interpreter, key library versions, config, extras."""
    import torch  # local: keep ``import pipeline.io`` light

    rec = {
        "code_version": code_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": str(torch.__version__),
    }
    if config is not None:
        rec["config"] = config
    rec.update(extra)
    return to_jsonable(rec)


def provenance_json(config: dict | None = None, **extra: Any) -> str:
    """:func:`provenance` as a compact JSON string (for HDF5 attributes)."""
    return json.dumps(provenance(config, **extra), sort_keys=True)
