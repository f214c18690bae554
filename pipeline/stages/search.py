"""The ``search`` stage (``cmimh search``): query an index with a text, an image, or a batch.

One query prints its hits as JSON lines (``{rank, id, distance, target, caption, image}``); a
batch (``--queries FILE``: one text a line, or JSON lines ``{"text": ...}`` / ``{"image": PATH}``)
prints one JSON line per query, ``{"query": i, "text"|"image": ..., "hits": [...]}``, all encoded
and ranked in one process. The index and its query encoders are loaded once
(:mod:`pipeline.search.index`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def read_queries(path: Path) -> list[dict]:
    """The queries of ``path``: ``[{"text": ...} | {"image": ...}]``, blank lines skipped; a line that
    starts with ``{`` is JSON (an image path relative to the file's folder when not absolute)."""
    from pipeline.errors import PipelineError

    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"missing queries file: {path}") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                q = json.loads(line)
            except ValueError as e:
                raise PipelineError(f"{path}:{n}: not valid JSON ({str(e).splitlines()[0][:80]})") from None
            if not isinstance(q, dict) or (("text" in q) == ("image" in q)):
                raise PipelineError(f'{path}:{n}: a JSON query is {{"text": ...}} or {{"image": PATH}}')
            if "image" in q:
                img = Path(str(q["image"]))
                q = {"image": str(img if img.is_absolute() else Path(path).parent / img)}
            else:
                q = {"text": q["text"]}
        else:
            q = {"text": line}
        out.append(q)
    if not out:
        raise PipelineError(f"{path}: no queries")
    return out


def run(index_path: Path, *, text: str | None = None, image: str | None = None, queries: Path | None = None,
        k: int = 10, target: str | None = None, backend: str = "exact", device: str = "auto",
        n_threads: int | None = None, text_precision: str | None = None):
    """Load ``index_path``, answer one query (or the batch ``queries``), print the hits as JSON lines;
    return them (a list of hits, or for a batch one list per query). A batch is ranked on
    ``n_threads`` threads (default: the cores), one query on one."""
    import os

    from pipeline.search.index import load_index, load_query_encoder, search, search_batch
    from pipeline.torchkit import resolve_device

    t0 = time.perf_counter()
    qs = read_queries(queries) if queries is not None else None
    index = load_index(index_path, resolve_device(device), text_precision=text_precision)
    kinds = {"text" if "text" in q else "image" for q in qs} if qs else {"text" if text is not None else "image"}
    for kind in sorted(kinds):
        load_query_encoder(index, kind)
    t1 = time.perf_counter()
    if qs is None:
        hits = search(index, text=text, image=image, k=k, target=target, backend=backend)
        t2 = time.perf_counter()
        for h in hits:
            sys.stdout.write(json.dumps(h) + "\n")
        print(f"loaded in {t1 - t0:.2f}s, query in {t2 - t1:.3f}s", file=sys.stderr)
        return hits
    results: list = [None] * len(qs)
    for kind in ("text", "image"):
        rows = [i for i, q in enumerate(qs) if kind in q]
        if not rows:
            continue
        args = {"texts": [qs[i]["text"] for i in rows]} if kind == "text" else \
            {"images": [Path(qs[i]["image"]) for i in rows]}
        for i, h in zip(rows, search_batch(index, k=k, target=target, backend=backend,
                                             n_threads=n_threads or os.cpu_count() or 1, **args)):
            results[i] = h
    t2 = time.perf_counter()
    for i, (q, h) in enumerate(zip(qs, results)):
        sys.stdout.write(json.dumps({"query": i + 1, **q, "hits": h}) + "\n")
    print(f"loaded in {t1 - t0:.2f}s, {len(qs)} queries in {t2 - t1:.3f}s "
          f"({1000 * (t2 - t1) / len(qs):.1f} ms each)", file=sys.stderr)
    return results
