"""The ``search`` stage (``cmimh search``): query an index with a text or an image, by hand.

Prints the top-k database items as JSON lines; the index and its query encoder are loaded once
(:mod:`pipeline.search.index`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def run(index_path: Path, *, text: str | None = None, image: str | None = None, k: int = 10,
        target: str | None = None, backend: str = "exact", device: str = "auto") -> list[dict]:
    """Load ``index_path``, answer one query, print its hits as JSON lines; return them."""
    from pipeline.search.index import load_index, load_query_encoder, search
    from pipeline.torchkit import resolve_device

    t0 = time.perf_counter()
    index = load_index(index_path, resolve_device(device))
    load_query_encoder(index, "text" if text is not None else "image")
    t1 = time.perf_counter()
    hits = search(index, text=text, image=image, k=k, target=target, backend=backend)
    t2 = time.perf_counter()
    for h in hits:
        sys.stdout.write(json.dumps(h) + "\n")
    print(f"loaded in {t1 - t0:.2f}s, query in {t2 - t1:.3f}s", file=sys.stderr)
    return hits
