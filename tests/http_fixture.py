"""A local HTTP file server for download tests: Range support on/off, dropped connections.

Usage in a test module (tests/ is on ``sys.path`` under pytest's default import mode)::

    from http_fixture import LocalHTTPServer

    @pytest.fixture
    def http_server():
        with LocalHTTPServer() as srv:
            yield srv

    def test_x(http_server, tmp_path):
        http_server.files["a.bin"] = b"..."
        url = http_server.url("a.bin")
        ...
        assert http_server.requests[-1].range is None

``http_server.drop_after = N`` makes the next ``drop_count`` (default 1) responses stop after N
body bytes and close the connection (the headers still announce the full length), as a flaky
host does. ``http_server.range_support = False`` makes it ignore ``Range`` and answer 200.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest


@dataclass
class Request:
    """What the server saw and answered."""

    path: str
    range: str | None
    status: int


class LocalHTTPServer:
    """Serves ``files`` (name -> bytes) at ``http://127.0.0.1:PORT/NAME`` from a thread."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.range_support = True
        self.drop_after: int | None = None
        self.drop_count = 1
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def start(self) -> "LocalHTTPServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "LocalHTTPServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _take_drop(self) -> int | None:
        with self._lock:
            if self.drop_after is None or self.drop_count <= 0:
                return None
            self.drop_count -= 1
            n = self.drop_after
            if self.drop_count == 0:
                self.drop_after = None
                self.drop_count = 1
            return n

    def _record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def _make_handler(owner: LocalHTTPServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            rng = self.headers.get("Range")
            data = owner.files.get(name)
            if data is None:
                owner._record(Request(name, rng, 404))
                self.send_error(404)
                return
            start, end, status = 0, len(data) - 1, 200
            if rng and owner.range_support:
                m = _RANGE.match(rng.strip())
                if m:
                    start = int(m.group(1))
                    if m.group(2):
                        end = min(int(m.group(2)), len(data) - 1)
                    if start >= len(data):
                        owner._record(Request(name, rng, 416))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
            body = data[start:end + 1]
            owner._record(Request(name, rng, status))
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            if owner.range_support:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            drop = owner._take_drop()
            if drop is not None:
                body = body[:drop]
                self.close_connection = True
            self.wfile.write(body)
            self.wfile.flush()

    return Handler


@pytest.fixture
def http_server() -> Iterator[LocalHTTPServer]:
    """A started :class:`LocalHTTPServer`, shut down after the test (registered for every test by conftest.py)."""
    with LocalHTTPServer() as srv:
        yield srv
