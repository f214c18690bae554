"""The ``serve`` stage (``cmimh serve``): indexes loaded once, answered over HTTP.

Every index and its query encoders are loaded before the server listens (a query never pays for
loading), then :mod:`pipeline.search.service` answers the JSON API and the search page until
interrupted. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def index_names(paths: list[Path]) -> list[str]:
    """A short unique name per index folder: ``dataset/method/bits`` for ``results/D/M/B/index``,
    else the folder's name (a suffix ``-2``, ``-3`` where names repeat)."""
    names: list[str] = []
    for p in paths:
        p = Path(p)
        parts = p.resolve().parts
        base = "/".join(parts[-4:-1]) if p.name == "index" and len(parts) >= 4 else p.name
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def load(paths: list[Path], device: str = "cpu", text_precision: str | None = None) -> dict:
    """``{name: Index}`` with every query encoder the indexes can use loaded (text queries in
    ``text_precision``, None: as recorded)."""
    from pipeline.search.index import load_index, load_query_encoder
    from pipeline.torchkit import resolve_device

    out = {}
    for name, p in zip(index_names(paths), paths):
        ix = load_index(p, resolve_device(device), text_precision=text_precision)
        for modality in ("text", "image"):
            if ix.extractors.get(modality) is not None:
                load_query_encoder(ix, modality)
        out[name] = ix
        log.info("serve: %s = %s (%d items, %d bits)", name, p, len(ix.ids), ix.bits)
    return out


def build(paths: list[Path], *, device: str = "cpu", max_upload_mb: float = 8.0, workers: int | None = None,
          text_precision: str | None = None):
    """The web app over ``paths`` (for tests and ASGI servers) and its :class:`Service`."""
    from pipeline.search.service import Service, check_workers, create_app

    check_workers(workers)  # before the indexes and encoders load (seconds)
    service = Service(load([Path(p) for p in paths], device, text_precision), max_upload=int(max_upload_mb * (1 << 20)),
                      workers=workers)
    return create_app(service), service


def run(paths: list[Path], *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
        max_upload_mb: float = 8.0, threads: int | None = None, workers: int | None = None,
        text_precision: str | None = None) -> None:
    """Load the indexes and serve until interrupted. Torch runs on ``threads`` threads (default 1:
    ``workers`` encoder threads per index, default one per core up to 4, batch concurrent queries
    instead, and intra-op threads on a busy CPU cost more than they give: measured 75 ms a text
    query on 1 thread, 535 ms on 2 with the machine loaded)."""
    import torch
    import uvicorn

    if threads is None:
        torch.set_num_threads(1)

    from pipeline.errors import PipelineError

    if not 0 < int(port) < 65536:
        raise PipelineError(f"--port must be 1..65535, not {port}")
    import socket

    try:  # fail before loading anything when the address is taken
        with socket.create_server((host, int(port))):
            pass
    except OSError as e:
        raise PipelineError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    app, service = build(paths, device=device, max_upload_mb=max_upload_mb, workers=workers,
                         text_precision=text_precision)
    log.info("serve: http://%s:%d/ (%s)", host, port, ", ".join(service.indexes))
    try:
        uvicorn.run(app, host=host, port=int(port), log_level="warning", access_log=False)
    finally:
        service.close()
