"""``source: table``: a CSV, TSV, JSON-lines or Parquet file with one pair a row.

Columns (names configurable under ``columns:``): ``image`` (a path relative to the table's folder,
or absolute), ``caption``, and optionally ``tags``, ``labels``, ``split``, ``id``. The format is
taken from the extension (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``/``.json``,
``.parquet``/``.pq``) unless ``format:`` names it. CSV and TSV are read with Python's ``csv``
module as UTF-8 (a byte-order mark, as Excel writes, is allowed): quoted fields may hold the
delimiter, quotes and line breaks, and a row is named by the line it starts on. Parquet is read
batch by batch with ``pyarrow`` (list columns are lists). Without an ``id`` column a pair's id is
its image path (relative to the table's folder) without the extension, so a second row for the
same image (another caption of it) is a duplicate key: give an ``id`` column to keep both.

Checks and policies: :mod:`pipeline.data.collection`; a malformed row (a JSON line that does not
parse, a row with more fields than the header, no image path, an image URL) is one line naming
the file and line.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from pipeline.data.collection import (CollectionSettings, Item, normalize_split, parse_list, prepare_items)
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
           ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    got = FORMATS.get(path.suffix.lower())
    if got is None:
        raise PipelineError(f"table {path}: unknown extension {path.suffix!r} (known: {', '.join(FORMATS)}; "
                            "or set format: csv | tsv | jsonl | parquet)")
    return got


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[str, dict]]:
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise PipelineError(f"cannot read table {path}: {e.strerror or e}") from None
    with f:
        reader = csv.reader(f, delimiter=delimiter)
        line = 1
        try:
            header = next(reader, None)
            if header is None:
                raise PipelineError(f"{path}: empty table (no header row)")
            header = [h.strip() for h in header]
            while True:
                line = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    return
                if not any(c.strip() for c in row):
                    continue
                if len(row) > len(header):
                    raise PipelineError(f"{path}:{line}: {len(row)} fields but the header has {len(header)} "
                                        "(an unquoted delimiter in a caption? quote the field)")
                yield f"{path}:{line}", dict(zip(header, row + [""] * (len(header) - len(row))))
        except csv.Error as e:
            raise PipelineError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
        except UnicodeDecodeError as e:
            raise PipelineError(f"{path}: not valid UTF-8 near line {reader.line_num + 1} (byte {e.start} of a read "
                                "block); save the table as UTF-8") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, "rb") as f:
        head = f.read(1 << 16).lstrip()
    if head[:3] == b"\xef\xbb\xbf":
        head = head[3:].lstrip()
    if head.startswith(b"["):  # a JSON array of objects
        try:
            rows = json.loads(path.read_bytes().decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as e:
            raise PipelineError(f"{path}: not valid UTF-8 JSON ({str(e).splitlines()[0][:120]})") from None
        for i, obj in enumerate(rows, 1):
            if not isinstance(obj, dict):
                raise PipelineError(f"{path}: item {i} is not a JSON object")
            yield f"{path}: item {i}", obj
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise PipelineError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as e:
                raise PipelineError(f"{path}:{lineno}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
            if not isinstance(obj, dict):
                raise PipelineError(f"{path}:{lineno}: not a JSON object")
            yield f"{path}:{lineno}", obj


def _parquet_rows(path: Path, columns: list[str]) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own error types
        raise PipelineError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    have = [c for c in columns if c in pf.schema_arrow.names]
    row = 0
    for batch in pf.iter_batches(columns=have, batch_size=4096):
        for obj in batch.to_pylist():
            row += 1
            yield f"{path}: row {row}", obj


def _cell(obj: dict, name: str) -> Any:
    v = obj.get(name)
    return None if isinstance(v, float) and v != v else v


def rows(path: Path, s: CollectionSettings) -> tuple[Iterator[tuple[str, dict]], list[str] | None]:
    """The rows of the table as (where, {column: value}); the header where the format has one."""
    fmt = table_format(path, s.format)
    cols = s.columns
    wanted = [cols.image, cols.caption, cols.tags, cols.labels, cols.split, cols.id]
    if fmt in ("csv", "tsv"):
        it = _csv_rows(path, "," if fmt == "csv" else "\t")
        first = next(it, None)
        if first is None:
            raise PipelineError(f"{path}: the table has no rows")
        header = list(first[1])
        return _chain(first, it), header
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except Exception as e:  # noqa: BLE001
            raise PipelineError(f"{path}: not a readable Parquet file ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:120]})") from None
        return _parquet_rows(path, wanted), list(names)
    return _jsonl_rows(path), None


def _chain(first, rest):
    yield first
    yield from rest


def items(path: Path, s: CollectionSettings) -> Iterator[Item]:
    cols = s.columns
    it, header = rows(path, s)
    if header is not None:
        for need in ("image", "caption"):
            if getattr(cols, need) not in header:
                raise PipelineError(f"{path}: no column {getattr(cols, need)!r} (columns: {', '.join(header)}; set "
                                    f"columns.{need} to the column holding the {need})")
    base = path.resolve().parent
    for where, obj in it:
        if header is None and (cols.image not in obj):
            raise PipelineError(f"{where}: no {cols.image!r} field (set columns.image)")
        image = _cell(obj, cols.image)
        image = "" if image is None else str(image).strip()
        if not image:
            raise PipelineError(f"{where}: empty image path")
        if "://" in image:
            raise PipelineError(f"{where}: the image {image[:80]!r} is a URL; images must be local files "
                                "(download them first, e.g. with img2dataset)")
        p = Path(image)
        full = p if p.is_absolute() else base / p
        caption = _cell(obj, cols.caption)
        caption = None if caption is None else str(caption)
        try:
            tags = list(dict.fromkeys(t.lower() for t in parse_list(_cell(obj, cols.tags), s.list_separator)))
            labels = parse_list(_cell(obj, cols.labels), s.list_separator)
        except ValueError as e:
            raise PipelineError(f"{where}: {e}") from None
        split = normalize_split(_cell(obj, cols.split), where)
        rid = _cell(obj, cols.id)
        if rid is not None and str(rid).strip():
            key = str(rid).strip()
        else:
            try:
                key = full.resolve().relative_to(base).with_suffix("").as_posix()
            except ValueError:
                key = full.with_suffix("").as_posix()
        yield Item(key=key, where=where, image=str(full.resolve()), caption=caption, tags=tags, labels=labels,
                   split=split, image_where=f"{full} ({where})")


def prepare(out_dir: str | Path, settings: dict, *, progress: bool = True) -> Path:
    """The prepare stage's adapter for ``source: table``."""
    s = CollectionSettings.of(settings, "table")
    path = Path(s.path)
    if not path.is_file():
        raise PipelineError(f"table data set {settings['dataset']!r}: no such file {path}")
    from pipeline.io import sha256_file

    return prepare_items(out_dir, items(path, s), s, "table", settings["dataset"], progress=progress,
                         extra_meta={"table": str(path.resolve()), "table_sha256": sha256_file(path),
                                     "format": table_format(path, s.format)})
