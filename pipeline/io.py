"""Atomic output files, checksums and provenance records.

Every artifact is written to a temporary file beside its final path and renamed into place
only once complete, so a killed job never leaves a half file that looks whole.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from pipeline import __version__
from pipeline.errors import PipelineError


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: errno values that mean "this output cannot be written here" (not a bug): one line, not a traceback.
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _chain(e: BaseException):
    """``e`` and the exceptions it was raised from or during (torch wraps an OSError in a RuntimeError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


_H5_MESSAGE = re.compile(r"error message = '([^']*)'")
_WRITE_TEXTS = ("write failed", "no space left", "file too large", "read-only file system", "disk quota",
                "unable to create file", "unable to truncate")


def write_failure(e: BaseException) -> BaseException | None:
    """The failure to write behind ``e``, if that is what ``e`` is: an OSError with a known errno,
    or an OSError (h5py) or RuntimeError (torch's zip writer) whose text says the write failed."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in WRITE_ERRNOS:
            return x
        if isinstance(x, (OSError, RuntimeError)) and any(t in str(x).lower() for t in _WRITE_TEXTS):
            return x
    return None


def is_write_failure(e: BaseException) -> bool:
    """True when ``e`` is (or wraps) a failure to write: see :func:`write_failure`."""
    return write_failure(e) is not None


_H5_FILENAME = re.compile(r"filename = '([^']*)'")


def write_error(path: str | os.PathLike | None, e: BaseException) -> PipelineError:
    """A one-line error for an output that could not be written (permission, full disk, ...).

    ``path`` None: the file the failure names (an OSError's filename, or the ``filename = '...'``
    of HDF5's multi-line message), else "an output"."""
    x = write_failure(e) or e
    m = _H5_MESSAGE.search(str(x))
    why = (m.group(1) if m else None) or getattr(x, "strerror", None) \
        or (str(x).strip().splitlines() or [type(x).__name__])[0]
    if path is None:
        f = _H5_FILENAME.search(str(x))
        path = getattr(x, "filename", None) or (f.group(1) if f else None) or "an output"
    return PipelineError(f"cannot write {path}: {why}")


def check_output_path(path: str | os.PathLike, folder: bool = False) -> None:
    """Refuse, in one line and before any work, an output path that cannot become a file (or, with
    ``folder``, a folder): one that is an existing folder (file), or one below an existing file
    (``results.json/m.json``). Creates nothing."""
    final = Path(path)
    if not folder and final.is_dir():
        raise PipelineError(f"cannot write {final}: it is an existing folder (give a file name, or remove the folder)")
    if folder and final.exists() and not final.is_dir():
        raise PipelineError(f"cannot write the folder {final}: it is an existing file")
    for parent in final.parents:
        if parent.exists():
            if not parent.is_dir():
                raise PipelineError(f"cannot write {final}: {parent} is a file, not a folder")
            break


def _make_parent(final: Path, folder: bool = False) -> None:
    check_output_path(final, folder)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(final, e) from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the final suffix (h5py, torch and matplotlib look at it) and
    starts with a dot so that globbing for outputs never picks up a partial file. The file gets
    the mode a plain ``open()`` would give it (0666 less the umask; ``mkstemp`` alone makes it
    0600, which hides results from the rest of a lab on a shared cluster). A failure to write
    (read-only folder, full disk, quota) is one line naming the output, and the temporary file
    is removed: nothing half-written is left.
    """
    final = Path(path)
    _make_parent(final)
    suffix = final.suffix if suffix is None else suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    except OSError as e:
        raise write_error(final, e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~current_umask())
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if is_write_failure(e):
            raise write_error(final, e) from None
        raise


@contextlib.contextmanager
def h5_file(path: str | os.PathLike) -> Iterator[Any]:
    """A new HDF5 file at ``path``, written through a Python file object.

    HDF5 writing to a path itself does not survive a full disk: once a write fails, closing the
    file fails too and the library retries at exit, printing tracebacks from h5py's ``__dealloc__``
    and then crashing the interpreter (a segmentation fault, after the one-line error). Through a
    file object the failed write is an ordinary OSError (ENOSPC, EFBIG) and the file closes."""
    import h5py

    with open(path, "w+b") as fh, h5py.File(fh, "w") as f:  # h5py reads back what it wrote
        yield f


@contextlib.contextmanager
def h5_output(path: str | os.PathLike) -> Iterator[Any]:
    """:func:`h5_file` at a temporary path renamed onto ``path`` on success (:func:`atomic_output`)."""
    with atomic_output(path) as tmp, h5_file(tmp) as f:
        yield f


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` only on success.

    Like :func:`atomic_output` for a folder (the search index): mode 0777 less the umask, a
    failed write is one line and leaves neither a partial folder nor a damaged old one.
    """
    final = Path(path)
    _make_parent(final, folder=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as e:
        raise write_error(final, e) from None
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_failure(e):
            raise write_error(final, e) from None
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` atomically, through a file object.

    torch names the archive inside the zip after the file it writes to; saving to the random
    temporary name would make two saves of the same object differ in bytes (and in checksum),
    so the archive is written through an open file, which torch names ``archive`` every time.
    """
    import torch

    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


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


@contextlib.contextmanager
def open_h5(path: str | os.PathLike, what: str):
    """Open an HDF5 file for reading; a missing, unreadable or damaged file (a truncated copy that
    opens but fails on reading a dataset) is one line naming ``what``."""
    import h5py

    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{what} {path} is a directory, not an HDF5 file")
    if not path.is_file():
        raise PipelineError(f"missing {what}: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PipelineError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None
    try:
        with f:
            yield f
    except OSError as e:  # h5py reading damaged data or metadata
        raise PipelineError(f"{path}: damaged {what} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})") from None


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


def check_unique_ids(ids: Iterable, where: str) -> None:
    """Every id once; else one line naming the first repeated id (ids key every artifact's rows)."""
    seen: dict[str, int] = {}
    for i, v in enumerate(ids):
        if v in seen:
            raise PipelineError(f"{where}: duplicate id {v!r} (rows {seen[v]} and {i}); ids must be unique")
        seen[v] = i


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


TIMING_KEYS = ("seconds",)
"""Wall-clock fields: they go to logs, benchmark TSVs and metrics.json, never into an artifact whose
checksum a later stage records (model.pt, codes.h5, tune records), so that the same seed on one
machine gives the same bytes."""


def without_timings(row: dict) -> dict:
    """``row`` without its wall-clock fields (:data:`TIMING_KEYS`)."""
    return {k: v for k, v in row.items() if k not in TIMING_KEYS}


def _torch_version() -> str:
    """``torch.__version__`` without importing torch when no one has: read from torch/version.py
    (a stage like evaluate needs no torch, and the import takes seconds)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return "not installed"
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
        return re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M).group(1)
    except (OSError, AttributeError):
        import torch  # an unusual layout: ask torch itself

        return str(torch.__version__)


def provenance(config: dict | None = None, **extra: Any) -> dict:
    """A provenance record: code version, interpreter, key library versions, config, extras."""
    rec = {
        "code_version": code_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": _torch_version(),
    }
    if config is not None:
        rec["config"] = config
    rec.update(extra)
    return to_jsonable(rec)


def provenance_json(config: dict | None = None, **extra: Any) -> str:
    """:func:`provenance` as a compact JSON string (for HDF5 attributes)."""
    return json.dumps(provenance(config, **extra), sort_keys=True)
