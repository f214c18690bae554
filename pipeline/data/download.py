"""Resumable, checksummed downloads of the benchmark archives (MIRFlickr-25K, NUS-WIDE, MS-COCO).

The archives are large (MIRFlickr-25K's images are 3 GB, MS-COCO's 19 GB) and their hosts are
slow or flaky, so a download must survive a dropped connection or a killed job without starting
over, and a file must never be used unless it is whole and the one expected:

* data goes to a hidden partial file ``dest_dir/.{filename}.part``; a rerun (or a retry after a
  connection error, with exponential backoff) continues it with an HTTP ``Range`` request. A
  server that answers ``200`` instead of ``206`` sends the whole file again, so the partial file
  restarts from zero; ``416`` (range not satisfiable) means it was already complete;
* once complete, size and checksum are verified (SHA-256 where known, else the MD5 that official
  sites often publish); only a verified file is renamed to its final name. A mismatch removes the
  partial file and raises one line;
* with no checksum known, a warning gives the SHA-256 that was computed, so a user can pin it;
* a checksum that is not official (``checksum_official=False``: measured on one copy, not
  published by the data set's authors) is not enforced: the size is, and a file whose checksum
  differs is used with a warning giving its own MD5 and SHA-256.

``mirror`` replaces a remote's host and folder with a base URL (``http(s)://``, ``file://`` or a
plain local folder) for users with a local copy of the archives. Only the standard library
(:mod:`urllib`) is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

USER_AGENT = "cmimh-pipeline (python urllib)"
RETRY_BACKOFF_S = 2.0   # first wait between attempts; doubles each time (tests set it to 0)
RETRY_BACKOFF_MAX_S = 60.0
# HTTP statuses worth retrying: the server or a proxy is busy, not the request wrong.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Remote:
    """A file to download, with what is known to check it."""

    url: str                 # http(s):// or file://
    filename: str            # name under the download folder
    sha256: str | None = None
    md5: str | None = None   # official sites often publish md5 only
    size: int | None = None  # bytes, when known
    # False where sha256/md5 come from an unofficial source: then only the size is enforced and
    # a checksum mismatch is logged (with the file's own digests) instead of refused.
    checksum_official: bool = True


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file (``algo``: any :func:`hashlib.new` name), read in 1 MiB chunks."""
    return file_digests(path, (algo,))[algo]


def file_digests(path: Path, algos: tuple[str, ...] = ("sha256", "md5")) -> dict[str, str]:
    """Several hex digests of a file in one pass (a 3 GB archive is read once, not twice)."""
    try:
        hs = {a: hashlib.new(a) for a in algos}
    except ValueError:
        raise PipelineError(f"unknown checksum algorithm in {algos!r}") from None
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                for h in hs.values():
                    h.update(block)
    except FileNotFoundError:
        raise PipelineError(f"missing file: {path}") from None
    return {a: h.hexdigest() for a, h in hs.items()}


def verify(path: Path, remote: Remote) -> None:
    """Check ``path`` against the remote's size and checksum (sha256 preferred, else md5).

    Raises :class:`PipelineError` with one line naming the file on a mismatch. With neither
    checksum known only the size (if known) is checked. A checksum that is not official
    (``remote.checksum_official`` false) is compared and a mismatch logged, never raised.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{remote.filename}: missing file {path}")
    actual = path.stat().st_size
    if remote.size is not None and actual != remote.size:
        raise PipelineError(f"{remote.filename}: size mismatch (expected {remote.size} bytes, "
                            f"got {actual})")
    for algo in ("sha256", "md5"):
        expected = getattr(remote, algo)
        if expected:
            if remote.checksum_official:
                got = file_digest(path, algo)
                if got.lower() != expected.lower():
                    raise PipelineError(f"{remote.filename}: checksum mismatch (expected {algo} "
                                        f"{expected.lower()}, got {got})")
                return
            got = file_digests(path, ("sha256", "md5"))
            if got[algo] != expected.lower():
                log.warning("%s: %s %s differs from the unofficial %s (size %d bytes, %s); using "
                            "it, its sha256 is %s", remote.filename, algo, got[algo], expected.lower(),
                            actual, "as expected" if remote.size is not None else "no size known",
                            got["sha256"])
            return


def resolve_url(remote: Remote, mirror: str | None = None) -> str:
    """The URL to fetch: the remote's own, or ``mirror + "/" + filename``.

    A mirror without a scheme is a local folder (made a ``file://`` URL).
    """
    if not mirror:
        return remote.url
    if "://" not in mirror:
        return Path(mirror).expanduser().resolve().joinpath(remote.filename).as_uri()
    return mirror.rstrip("/") + "/" + urllib.parse.quote(remote.filename)


class _Transient(Exception):
    """A failure worth retrying (connection dropped, timeout, 5xx)."""


def fetch(remote: Remote, dest_dir: Path, *, mirror: str | None = None, progress: bool = True,
          timeout: float = 60.0, retries: int = 3, chunk_size: int = 1 << 20) -> Path:
    """Download ``remote`` into ``dest_dir`` (resuming a partial download); return its path.

    An existing ``dest_dir/filename`` that verifies is returned without any network access; one
    that does not verify is replaced once a verified copy has been downloaded. ``retries``:
    further attempts after a connection error, each resuming where the last one stopped.
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / remote.filename
    if final.exists():
        try:
            verify(final, remote)
        except PipelineError as e:
            log.warning("%s; downloading it again", e)
        else:
            log.debug("%s already present and verified", final)
            return final
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PipelineError(f"cannot create download folder {dest_dir}: {e}") from None
    part = dest_dir / f".{remote.filename}.part"
    url = resolve_url(remote, mirror)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise PipelineError(f"{remote.filename}: unsupported URL {url!r} (http, https or file)")

    attempts = 1 + max(0, int(retries))
    for attempt in range(attempts):
        try:
            if scheme == "file":
                _copy_file(url, part, remote, progress, chunk_size)
            else:
                _download_http(url, part, remote, progress, timeout, chunk_size)
            break
        except _Transient as e:
            have = part.stat().st_size if part.exists() else 0
            if attempt + 1 >= attempts:
                raise PipelineError(f"{remote.filename}: download from {url} failed after "
                                    f"{attempts} attempt(s) ({e}); {have} bytes kept in {part}, "
                                    "rerun to resume") from None
            wait = min(RETRY_BACKOFF_S * 2 ** attempt, RETRY_BACKOFF_MAX_S)
            log.warning("%s: %s; retrying in %.0f s (attempt %d of %d, resuming at %d bytes)",
                        remote.filename, e, wait, attempt + 2, attempts, have)
            time.sleep(wait)

    try:
        verify(part, remote)
    except PipelineError as e:
        part.unlink(missing_ok=True)
        raise PipelineError(f"{e}; the file was removed, rerun to download again") from None
    if not (remote.sha256 or remote.md5):
        log.warning("%s: no checksum known to verify it; its sha256 is %s (pin it in the "
                    "Remote to check future downloads)", remote.filename, file_digest(part, "sha256"))
    os.replace(part, final)
    log.info("downloaded %s", final)
    return final


def _progress_bar(remote: Remote, total: int | None, initial: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=remote.filename, disable=not progress, leave=False)


def _copy_file(url: str, part: Path, remote: Remote, progress: bool, chunk_size: int) -> None:
    """``file://`` source: copy into ``part``, continuing from its current length."""
    src = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    try:
        total = src.stat().st_size
    except OSError as e:
        raise PipelineError(f"{remote.filename}: cannot read {src} ({e.strerror or e})") from None
    have = part.stat().st_size if part.exists() else 0
    if have > total:
        have = 0
    with open(src, "rb") as fin, open(part, "r+b" if have else "wb") as fout, \
            _progress_bar(remote, total, have, progress) as bar:
        fin.seek(have)
        fout.seek(have)
        fout.truncate()
        for block in iter(lambda: fin.read(chunk_size), b""):
            fout.write(block)
            bar.update(len(block))


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.I)
_CONTENT_RANGE_UNSAT = re.compile(r"bytes\s+\*/(\d+)", re.I)


def _download_http(url: str, part: Path, remote: Remote, progress: bool, timeout: float,
                   chunk_size: int) -> None:
    """One HTTP attempt: request the rest of ``part`` and append it; raise _Transient to retry."""
    have = part.stat().st_size if part.exists() else 0
    if remote.size is not None and have > remote.size:
        log.warning("%s: partial file is longer than the expected %d bytes; restarting",
                    remote.filename, remote.size)
        part.unlink()
        have = 0
    if remote.size is not None and have == remote.size:
        return  # complete already (a killed run between the last byte and the rename)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        with contextlib.suppress(Exception):
            e.close()
        if e.code == 416 and have:
            m = _CONTENT_RANGE_UNSAT.search(e.headers.get("Content-Range", "") if e.headers else "")
            if m and int(m.group(1)) != have:
                part.unlink()
                raise _Transient(f"server has {m.group(1)} bytes, partial file {have}; restarting")
            return  # the partial file already holds the whole file
        if e.code in _RETRY_STATUS:
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise PipelineError(f"{remote.filename}: HTTP {e.code} {e.reason} from {url}") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
            socket.timeout) as e:
        raise _Transient(_reason(e)) from None

    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and status == 206:
            m = _CONTENT_RANGE.search(resp.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != have:
                log.warning("%s: server answered an unexpected range (%s); restarting",
                            remote.filename, resp.headers.get("Content-Range"))
                have = 0
                part.unlink()
                raise _Transient("unexpected Content-Range")
        elif have:
            log.info("%s: server does not resume (HTTP %d); restarting from zero",
                     remote.filename, status)
            have = 0
        total = have + length if length is not None else remote.size
        got = 0
        with open(part, "ab" if have else "wb") as fout, \
                _progress_bar(remote, total, have, progress) as bar:
            try:
                for block in iter(lambda: resp.read(chunk_size), b""):
                    fout.write(block)
                    got += len(block)
                    bar.update(len(block))
            except (http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout,
                    urllib.error.URLError) as e:
                raise _Transient(f"connection lost after {have + got} bytes ({_reason(e)})") from None
        if length is not None and got < length:
            raise _Transient(f"connection closed after {have + got} of {have + length} bytes")


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return f"{type(e.reason).__name__}: {e.reason}" if isinstance(e.reason, BaseException) \
            else str(e.reason)
    if isinstance(e, http.client.IncompleteRead):
        return f"incomplete read ({len(e.partial)} bytes)"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
