"""Resumable work files, shared by the image and the sentence extraction.

Full-size data sets take hours, so extraction writes rows into a hidden work file beside the
output (``.NAME.partial``), committed chunk by chunk with a count of complete rows and a
fingerprint of what produced them; a killed job's rerun carries on from the last complete
chunk, a rerun against different inputs starts afresh, and only a complete file gets the
output's name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import check_output_path, is_write_failure, write_error

log = logging.getLogger(__name__)



def digest(values: Sequence) -> str:
    """SHA-256 of the values' text, one per line: a cheap identity for a list of ids or files."""
    h = hashlib.sha256()
    for v in values:
        h.update(str(v).encode())
        h.update(b"\n")
    return h.hexdigest()


def fingerprint(record: dict) -> str:
    """SHA-256 of a JSON record of everything that determines a work file's rows."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def work_path(out: Path) -> Path:
    """The hidden work file beside ``out`` (``.image.h5.partial``): never globbed as an output."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


class WorkFile:
    """A resumable HDF5 work file: preallocated datasets, a fingerprint, a count of complete rows.

    Rows ``[0, rows_done)`` are final. The row datasets are contiguous and allocated when the
    file is created (sparse on disk), so writing rows changes no HDF5 metadata; a commit flushes
    the rows, then writes the count (itself a preallocated scalar dataset) and flushes again. A
    process killed at any point therefore leaves a readable file whose count never exceeds the
    rows on disk. On opening, a work file with another fingerprint, the wrong shapes, or that
    HDF5 cannot read is discarded (logged) and extraction starts afresh; one locked by a running
    process is an error. :meth:`finish` renames it onto the output. Durability against a power
    loss (fsync) is not attempted: the case is a job killed by a scheduler or a user.
    """

    def __init__(self, out: str | os.PathLike, fp: str, layout: dict[str, tuple[tuple[int, ...], str]],
                 n: int, init: Callable[[h5py.File], None] | None = None):
        self.out = Path(out)
        self.path = work_path(self.out)
        self.fp, self.layout, self.n, self.init = fp, layout, int(n), init
        self.f: h5py.File | None = None
        self.rows_done = 0

    def __enter__(self) -> "WorkFile":
        check_output_path(self.out)  # an output that is a folder: one line now, not after hours
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.out, e) from None
        if self.path.exists():
            reason = self._check()
            if reason is None:
                return self
            log.warning("%s: %s; starting afresh", self.path, reason)
            self.path.unlink()
        self._create()
        self.f = h5py.File(self.path, "r+")
        self.rows_done = 0
        return self

    def _check(self) -> str | None:
        """Open an existing work file; None when it can be resumed, else why not."""
        try:
            f = h5py.File(self.path, "r+")
        except OSError as e:
            if "lock" in str(e).lower():
                raise PipelineError(f"{self.path} is in use by another process (a second run of the same "
                                    "extraction?)") from None
            return f"unreadable work file ({str(e).splitlines()[0]})"
        try:
            reason = self._why_not(f)
        except Exception as e:  # noqa: BLE001 - damaged metadata: start afresh
            reason = f"damaged work file ({type(e).__name__})"
        if reason is not None:
            f.close()
            return reason
        self.f, self.rows_done = f, int(f["rows_done"][()])
        return None

    def _why_not(self, f: h5py.File) -> str | None:
        if f.attrs.get("fingerprint") != self.fp:
            return "inputs or settings changed since the work file was started"
        if "rows_done" not in f:
            return "no row count"
        for name, (shape, dtype) in self.layout.items():
            if name not in f or f[name].shape != tuple(shape) or f[name].dtype != np.dtype(dtype):
                return f"dataset {name!r} missing or of another shape"
        done = int(f["rows_done"][()])
        if not 0 <= done <= self.n:
            return f"row count {done} outside 0..{self.n}"
        return None

    def _create(self) -> None:
        """Write the empty file under a temporary name, then rename: a half-created file is never resumed."""
        tmp = self.path.with_name(self.path.name + ".new")
        with h5py.File(tmp, "w") as f:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # allocated, not written: sparse on disk
            for name, (shape, dtype) in self.layout.items():
                f.create_dataset(name, shape, dtype, dcpl=dcpl)
            f.create_dataset("rows_done", (), "int64", dcpl=dcpl)[()] = 0
            if self.init is not None:
                self.init(f)
            f.attrs["fingerprint"] = self.fp
        os.replace(tmp, self.path)

    def commit(self, rows_done: int) -> None:
        """Rows ``[0, rows_done)`` are written: flush them, then record the count."""
        self.f.flush()
        self.f["rows_done"][()] = int(rows_done)
        self.f.flush()
        self.rows_done = int(rows_done)

    def finish(self) -> None:
        """All rows done: drop the bookkeeping and rename the work file onto the output."""
        if self.rows_done != self.n:
            raise RuntimeError(f"{self.path}: finish with {self.rows_done} of {self.n} rows")
        del self.f["rows_done"]
        del self.f.attrs["fingerprint"]
        self.f.close()
        self.f = None
        os.replace(self.path, self.out)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.f is not None:  # interrupted: keep the committed rows for the next run
            try:
                self.f.close()
            except Exception:  # noqa: BLE001 - closing after a failed write (full disk) can fail too
                if exc is None:
                    raise
            self.f = None
        if exc is not None and is_write_failure(exc):  # full disk, quota: one line naming the output
            e = write_error(self.out, exc)
            raise PipelineError(f"{e} (the {self.rows_done} rows done are kept in {self.path}: free some "
                                "space and rerun to resume)") from None
