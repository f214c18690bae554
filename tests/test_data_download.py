"""Resumable, checksummed downloads (pipeline.data.download) against a local HTTP server."""

from __future__ import annotations

import hashlib
import logging

import pytest

from pipeline.data import download
from pipeline.data.download import Remote, fetch, file_digest, file_digests, resolve_url, verify
from pipeline.errors import PipelineError


DATA = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes
SHA = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)


def _remote(srv, name="a.bin", **kw) -> Remote:
    srv.files[name] = DATA
    kw.setdefault("sha256", SHA)
    return Remote(url=srv.url(name), filename=name, **kw)


def test_file_digest_known_values(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    # FIPS 180-2 / RFC 1321 test vectors for "abc"
    assert file_digest(p, "sha256") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_digest(p, "md5") == "900150983cd24fb0d6963f7d28e17f72"
    with pytest.raises(PipelineError, match="missing file"):
        file_digest(tmp_path / "nope", "sha256")
    big = tmp_path / "big"
    big.write_bytes(DATA * 300)  # > one 1 MiB read chunk
    assert file_digests(big) == {"sha256": hashlib.sha256(DATA * 300).hexdigest(),
                                 "md5": hashlib.md5(DATA * 300).hexdigest()}


def test_verify_size_sha_md5(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(DATA)
    verify(p, Remote("x", "f.bin", sha256=SHA, size=len(DATA)))
    verify(p, Remote("x", "f.bin", md5=MD5.upper()))  # case-insensitive
    verify(p, Remote("x", "f.bin"))  # nothing known: nothing to check
    with pytest.raises(PipelineError, match=r"f.bin: size mismatch \(expected 5 bytes, got 10244\)"):
        verify(p, Remote("x", "f.bin", sha256=SHA, size=5))
    mismatch = rf"f.bin: checksum mismatch \(expected sha256 {'0' * 64}, got {SHA}\)"
    with pytest.raises(PipelineError, match=mismatch):
        verify(p, Remote("x", "f.bin", sha256="0" * 64, md5=MD5))
    with pytest.raises(PipelineError, match=rf"expected md5 {'1' * 32}, got {MD5}"):
        verify(p, Remote("x", "f.bin", md5="1" * 32))
    # sha256 is preferred: a right sha256 passes whatever the md5
    verify(p, Remote("x", "f.bin", sha256=SHA, md5="1" * 32))


def test_plain_download(http_server, tmp_path):
    r = _remote(http_server, size=len(DATA), md5=MD5)
    out = fetch(r, tmp_path / "dl", progress=False)
    assert out == tmp_path / "dl" / "a.bin"
    assert out.read_bytes() == DATA
    assert not (tmp_path / "dl" / ".a.bin.part").exists()
    assert [(q.range, q.status) for q in http_server.requests] == [(None, 200)]


def test_interrupted_download_resumes_on_rerun(http_server, tmp_path):
    r = _remote(http_server)
    http_server.drop_after = 3000
    failed = r"a.bin: download from .* failed after 1 attempt\(s\).*rerun to resume"
    with pytest.raises(PipelineError, match=failed) as ei:
        fetch(r, tmp_path, retries=0, progress=False)
    assert "\n" not in str(ei.value)
    part = tmp_path / ".a.bin.part"
    assert part.read_bytes() == DATA[:3000]
    assert not (tmp_path / "a.bin").exists()

    out = fetch(r, tmp_path, retries=0, progress=False)
    assert out.read_bytes() == DATA
    assert not part.exists()
    assert [(q.range, q.status) for q in http_server.requests] == [(None, 200), ("bytes=3000-", 206)]


def test_dropped_connection_retried_within_one_call(http_server, tmp_path):
    r = _remote(http_server)
    http_server.drop_after, http_server.drop_count = 1000, 2  # two drops, then a full answer
    out = fetch(r, tmp_path, retries=3, progress=False)
    assert out.read_bytes() == DATA
    assert [q.range for q in http_server.requests] == [None, "bytes=1000-", "bytes=2000-"]


def test_retries_exhausted(http_server, tmp_path):
    r = _remote(http_server)
    http_server.drop_after, http_server.drop_count = 100, 10
    with pytest.raises(PipelineError, match=r"failed after 3 attempt\(s\).*300 bytes kept"):
        fetch(r, tmp_path, retries=2, progress=False)
    assert len(http_server.requests) == 3


def test_checksum_mismatch_removes_partial(http_server, tmp_path):
    r = _remote(http_server, sha256="ab" * 32)
    with pytest.raises(PipelineError) as ei:
        fetch(r, tmp_path, progress=False)
    assert str(ei.value) == (f"a.bin: checksum mismatch (expected sha256 {'ab' * 32}, got {SHA}); "
                             "the file was removed, rerun to download again")
    assert list(tmp_path.iterdir()) == []  # no final file, no partial


def test_md5_mismatch_when_only_md5_known(http_server, tmp_path):
    r = _remote(http_server, sha256=None, md5="0" * 32)
    with pytest.raises(PipelineError, match=rf"expected md5 {'0' * 32}, got {MD5}\); the file was removed"):
        fetch(r, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_server_without_range_support_restarts(http_server, tmp_path):
    r = _remote(http_server)
    (tmp_path / ".a.bin.part").write_bytes(DATA[:4000])
    http_server.range_support = False
    out = fetch(r, tmp_path, progress=False)
    assert out.read_bytes() == DATA  # not the 4,000 bytes twice
    assert [(q.range, q.status) for q in http_server.requests] == [("bytes=4000-", 200)]


def test_416_means_already_complete(http_server, tmp_path):
    r = _remote(http_server)  # no size known: only the server can say it is complete
    (tmp_path / ".a.bin.part").write_bytes(DATA)
    out = fetch(r, tmp_path, progress=False)
    assert out.read_bytes() == DATA
    assert [(q.range, q.status) for q in http_server.requests] == [(f"bytes={len(DATA)}-", 416)]


def test_complete_partial_with_known_size_needs_no_request(http_server, tmp_path):
    r = _remote(http_server, size=len(DATA))
    (tmp_path / ".a.bin.part").write_bytes(DATA)
    assert fetch(r, tmp_path, progress=False).read_bytes() == DATA
    assert http_server.requests == []


def test_already_present_not_downloaded(http_server, tmp_path):
    r = _remote(http_server)
    (tmp_path / "a.bin").write_bytes(DATA)
    assert fetch(r, tmp_path, progress=False) == tmp_path / "a.bin"
    assert http_server.requests == []


def test_present_but_corrupt_is_replaced(http_server, tmp_path, caplog):
    r = _remote(http_server)
    (tmp_path / "a.bin").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="pipeline.data.download"):
        out = fetch(r, tmp_path, progress=False)
    assert out.read_bytes() == DATA
    assert "checksum mismatch" in caplog.text and "downloading it again" in caplog.text
    assert len(http_server.requests) == 1


def test_no_checksum_warns_with_sha256(http_server, tmp_path, caplog):
    r = _remote(http_server, sha256=None)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.download"):
        fetch(r, tmp_path, progress=False)
    assert f"its sha256 is {SHA}" in caplog.text


def test_http_404_is_not_retried(http_server, tmp_path):
    r = Remote(http_server.url("missing.bin"), "missing.bin")
    with pytest.raises(PipelineError, match=r"missing.bin: HTTP 404 .* from http://"):
        fetch(r, tmp_path, retries=3, progress=False)
    assert len(http_server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_file_url_and_resume(tmp_path):
    src = tmp_path / "src" / "a b.bin"  # a space: the URL is percent-encoded
    src.parent.mkdir()
    src.write_bytes(DATA)
    r = Remote(src.as_uri(), "a b.bin", sha256=SHA)
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / ".a b.bin.part").write_bytes(DATA[:500])
    assert fetch(r, dest, progress=False).read_bytes() == DATA
    assert sorted(p.name for p in dest.iterdir()) == ["a b.bin"]


def test_missing_file_url(tmp_path):
    r = Remote((tmp_path / "nope.bin").as_uri(), "nope.bin")
    with pytest.raises(PipelineError, match="nope.bin: cannot read"):
        fetch(r, tmp_path / "dl", progress=False)


def test_mirror_http_and_folder(http_server, tmp_path):
    # the remote's own host is unreachable: only the mirror can serve it
    r = Remote("http://127.0.0.1:9/official/dir/a.bin", "a.bin", sha256=SHA)
    http_server.files["mirror/a.bin"] = DATA
    assert resolve_url(r, http_server.base_url + "/mirror/") == http_server.url("mirror/a.bin")
    out = fetch(r, tmp_path / "h", mirror=http_server.base_url + "/mirror", progress=False)
    assert out.read_bytes() == DATA
    assert [q.path for q in http_server.requests] == ["mirror/a.bin"]

    folder = tmp_path / "local copy"
    folder.mkdir()
    (folder / "a.bin").write_bytes(DATA)
    assert fetch(r, tmp_path / "f", mirror=str(folder), progress=False).read_bytes() == DATA
    assert fetch(r, tmp_path / "u", mirror=folder.as_uri(), progress=False).read_bytes() == DATA
    assert resolve_url(r, None) == r.url


def test_unsupported_scheme(tmp_path):
    with pytest.raises(PipelineError, match="unsupported URL"):
        fetch(Remote("ftp://host/a.bin", "a.bin"), tmp_path, progress=False)


def test_unofficial_checksum_is_logged_not_enforced(http_server, tmp_path, caplog):
    """A checksum from an unofficial source (checksum_official=False): the size is enforced, a
    different checksum is accepted and logged with the file's own digests."""
    r = _remote(http_server, sha256=None, md5="0" * 32, size=len(DATA), checksum_official=False)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.download"):
        out = fetch(r, tmp_path, progress=False)
    assert out.read_bytes() == DATA
    assert f"md5 {MD5} differs from the unofficial {'0' * 32}" in caplog.text
    assert f"size 10244 bytes, as expected); using it, its sha256 is {SHA}" in caplog.text
    verify(out, r)  # a rerun accepts it as well
    with pytest.raises(PipelineError, match=r"a.bin: size mismatch \(expected 5 bytes, got 10244\)") as ei:
        verify(out, Remote("x", "a.bin", md5="0" * 32, size=5, checksum_official=False))
    assert "\n" not in str(ei.value)


def test_unofficial_checksum_wrong_size_refused(http_server, tmp_path):
    r = _remote(http_server, sha256=None, md5=MD5, size=len(DATA) + 1, checksum_official=False)
    with pytest.raises(PipelineError, match=r"a.bin: size mismatch .*; the file was removed") as ei:
        fetch(r, tmp_path, progress=False, retries=0)
    assert "\n" not in str(ei.value)
    assert list(tmp_path.iterdir()) == []
