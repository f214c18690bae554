"""Atomic outputs (pipeline/io.py): the user's umask is respected, a failed write is one line and
leaves nothing half-written."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from pipeline import io
from pipeline.errors import PipelineError

from conftest import REPO


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                      (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    io.write_json(tmp_path / "m.json", {"a": 1})
    io.write_text(tmp_path / "r.md", "x")
    io.save_torch(tmp_path / "model.pt", {"a": 1})
    with io.atomic_directory(tmp_path / "index") as d:
        (d / "f").write_text("x")
    for name in ("m.json", "r.md", "model.pt"):
        assert mode(tmp_path / name) == file_mode, name
    assert mode(tmp_path / "index") == dir_mode and mode(tmp_path / "index" / "f") == file_mode


def test_atomic_directory_replaces_an_old_folder_only_on_success(tmp_path):
    with io.atomic_directory(tmp_path / "index") as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with io.atomic_directory(tmp_path / "index") as d:
            (d / "b").write_text("2")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temporary folder left
    assert [p.name for p in (tmp_path / "index").iterdir()] == ["a"]  # the old one intact


def test_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PipelineError, match=r"cannot write .*afile/m\.json"):
        io.write_json(tmp_path / "afile" / "m.json", {})
    with pytest.raises(PipelineError, match=r"cannot write .*afile/sub/index"):
        with io.atomic_directory(tmp_path / "afile" / "sub" / "index"):
            pass


@pytest.mark.skipif(not hasattr(os, "setrlimit") and sys.platform != "linux", reason="needs RLIMIT_FSIZE")
@pytest.mark.parametrize("what", ["json", "h5", "torch"])
def test_full_disk_is_one_line_and_leaves_no_file(tmp_path, what):
    """A file-size limit makes writes fail like a full disk (EFBIG instead of ENOSPC)."""
    code = f"""
import resource, signal, sys, numpy as np
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from pipeline import io
from pipeline.errors import PipelineError
out = Path(sys.argv[1])
try:
    if {what!r} == "json":
        io.write_json(out / "m.json", {{"x": list(range(10000))}})
    elif {what!r} == "h5":
        import h5py
        with io.atomic_output(out / "c.h5") as tmp, h5py.File(tmp, "w") as f:
            f["a"] = np.zeros(100000)
    else:
        import torch
        io.save_torch(out / "model.pt", {{"w": torch.zeros(100000)}})
except PipelineError as e:
    print("ERR", e)
"""
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-1500:]
    line = p.stdout.strip()
    assert line.startswith("ERR cannot write ") and "\n" not in line, p.stdout + p.stderr[-500:]
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


def test_open_h5_names_a_folder_given_as_a_file(tmp_path):
    (tmp_path / "codes.h5").mkdir()
    with pytest.raises(PipelineError, match=r"^codes file .*codes\.h5 is a directory, not an HDF5 file$"):
        with io.open_h5(tmp_path / "codes.h5", "codes file"):
            pass


def test_an_output_that_is_a_folder_or_below_a_file_is_one_line_and_leaves_nothing(tmp_path):
    (tmp_path / "m.json").mkdir()
    with pytest.raises(PipelineError, match=r"cannot write .*m\.json: it is an existing folder"):
        io.write_json(tmp_path / "m.json", {})
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PipelineError, match=r"cannot write .*afile/sub/m\.json: .*afile is a file, not a folder$"):
        io.write_json(tmp_path / "afile" / "sub" / "m.json", {})
    with pytest.raises(PipelineError, match=r"cannot write the folder .*afile: it is an existing file"):
        with io.atomic_directory(tmp_path / "afile"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "m.json"]  # no temporary left
    assert list((tmp_path / "m.json").iterdir()) == []


def test_an_hdf5_write_failure_is_one_line_naming_its_file():
    """h5py's message spans lines (a time stamp with its newline): the line names the file and why."""
    e = OSError("Can't synchronously write data (file write failed: time = Wed Dec  2 01:45:17 2026\n"
                ", filename = '/x/.fc7.h5.partial', file descriptor = 3, errno = 28, error message = "
                "'No space left on device', buf = 0x55, total write size = 997376)")
    assert str(io.write_error(None, e)) == "cannot write /x/.fc7.h5.partial: No space left on device"


def test_cli_unexpected_write_failure_is_one_line(tmp_path, monkeypatch, capsys):
    import pipeline.cli as cli

    def full(a):
        raise OSError("Can't synchronously write data (file write failed: time = Wed Dec  2 01:45:17 2026\n"
                      ", filename = '/x/c.h5', errno = 28, error message = 'No space left on device', buf = 0x55)")

    monkeypatch.setattr(cli, "cmd_evaluate", full)
    assert cli.main(["evaluate", "x.h5", "-o", str(tmp_path / "m.json")]) == 2
    assert capsys.readouterr().err.strip() == "cmimh: error: cannot write /x/c.h5: No space left on device"


@pytest.mark.skipif(not hasattr(os, "setrlimit") and sys.platform != "linux", reason="needs RLIMIT_FSIZE")
@pytest.mark.parametrize("limit", [4096, 8192, 12288, 16384])
def test_a_full_disk_while_hdf5_closes_its_file_is_one_line_and_no_crash(tmp_path, limit):
    """HDF5 writing to a path cannot close the file once a write failed: h5py printed tracebacks from
    __dealloc__ and the interpreter died of a segmentation fault at exit, after the one line."""
    code = f"""
import resource, signal, sys, numpy as np
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from pipeline.errors import PipelineError
from pipeline.features.store import write_features
rng = np.random.default_rng(0)
n = 60
splits = {{"query": np.arange(10), "database": np.arange(10, n), "train": np.arange(10, 40)}}
try:
    write_features(Path(sys.argv[1]) / "f.h5", image=rng.normal(size=(n, 12)).astype(np.float32),
                   text=rng.normal(size=(n, 9)).astype(np.float32), labels=np.ones((n, 4), np.uint8),
                   splits=splits, ids=[str(i) for i in range(n)], provenance={{"note": "x" * 3000}})
    print("OK")
except PipelineError as e:
    print("ERR", e)
"""
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, \
        (p.returncode, p.stderr[-800:])
    out = p.stdout.strip()
    assert out == "OK" or (out.startswith("ERR cannot write ") and out.endswith("f.h5: File too large")), out
    if out != "OK":
        assert list(tmp_path.iterdir()) == []
