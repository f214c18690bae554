"""`cmimh` subcommands: user errors are one line on stderr with exit status 2, never a traceback."""

import contextlib
import json

import pytest

from pipeline.cli import main

from conftest import make_features_h5


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "/no/such/codes.h5", "-o", "m.json"], "missing codes file: /no/such/codes.h5"),
    (["evaluate", "x.h5", "-o", "m.json", "--k", "0"], "--k must be >= 1"),
    (["prepare", "--settings", '{"dataset": "d", "source": "demo", "seed": 0}', "-o", "d/wrong.txt"],
     "must be named manifest.jsonl"),
    (["prepare", "--settings", '{"dataset": "m", "source": "magic", "seed": 0}', "-o", "d/manifest.jsonl"],
     "no prepare adapter"),
    (["train", "--settings", "{oops", "--features", "f.h5", "--bits", "8", "-o", "m.pt"], "not valid JSON"),
    (["search", "/no/index", "--text", "ball"], "not an index folder"),
])
def test_user_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    line = _err(capsys)
    assert line.startswith("cmimh: error:") and needle in line


def test_train_rejects_bad_method_and_bits(tmp_path, capsys):
    feats = tmp_path / "f.h5"
    from pipeline.stages import extract

    src = make_features_h5(tmp_path / "mine.h5", n=60)
    extract.run_import(src, {"dataset": "x", "seed": 0, "n_query": 10, "n_train": 30}, feats)
    s = json.dumps({"dataset": "x", "seed": 0, "device": "cpu", "settings": {"hidden": 8, "epochs": 1, "batch_size": 10}})
    assert main(["train", "--settings", s, "--features", str(feats), "--bits", "8", "--method", "magic",
                 "-o", str(tmp_path / "m.pt")]) == 2
    assert "unknown method 'magic'" in _err(capsys)
    assert main(["train", "--settings", s, "--features", str(feats), "--bits", "0",
                 "-o", str(tmp_path / "m.pt")]) == 2
    assert "code length (--bits) must be between 1 and 1024, not 0" in _err(capsys)
    # a code length past the schema's maximum is refused before torch tries to allocate it
    assert main(["train", "--settings", s, "--features", str(feats), "--bits", "100000000",
                 "-o", str(tmp_path / "m.pt")]) == 2
    assert "must be between 1 and 1024, not 100000000" in _err(capsys)
    assert not (tmp_path / "m.pt").exists()
    # and a valid call trains, writes the model and the log
    assert main(["train", "--settings", s, "--features", str(feats), "--bits", "8", "--no-progress",
                 "--log-csv", str(tmp_path / "log.csv"), "-o", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "log.csv").read_text().startswith("epoch,")


def test_torch_failing_to_allocate_is_the_out_of_memory_line(tmp_path, monkeypatch, capsys):
    """torch reports a failed allocation as a RuntimeError, not a MemoryError: still one line (status
    2) that says what to change, not an unexpected error."""
    import pipeline.cli as cli

    def oom(a):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 25600000000 bytes.")

    monkeypatch.setattr(cli, "cmd_evaluate", oom)
    assert main(["evaluate", "x.h5", "-o", str(tmp_path / "m.json")]) == 2
    assert _err(capsys).startswith("cmimh: error: out of memory in `cmimh evaluate`")


@pytest.mark.parametrize("argv, needle", [
    (["train", "--features", "f.h5", "--bits", "8", "-o", "out"], "cannot write out: it is an existing folder"),
    (["train", "--features", "f.h5", "--bits", "8", "-o", "m.pt", "--log-csv", "afile/l.csv"],
     "cannot write afile/l.csv: afile is a file, not a folder"),
    (["evaluate", "c.h5", "-o", "out"], "cannot write out: it is an existing folder"),
    (["report", "--results", "r", "--dataset", "d", "--bits", "8", "-o", "afile/r.md"], "afile is a file"),
    (["encode", "--model", "m.pt", "--features", "f.h5", "-o", "c.h5", "--index", "afile"],
     "cannot write the folder afile: it is an existing file"),
    (["evaluate", "c.h5", "-o", "m.json", "--log", "afile/e.log"], "the log file: cannot write afile/e.log: afile is a file"),
])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch, capsys, argv, needle):
    """Checked before any input is read (no features.h5 exists here): an output that is a folder, or
    below a file, is one line at once, not an unexpected IsADirectoryError after the training."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "afile").write_text("x")
    assert main(argv) == 2
    line = _err(capsys)
    assert line.startswith("cmimh: error:") and needle in line, line


def test_sigterm_removes_the_temporary_file_and_says_so(tmp_path, monkeypatch, capsys):
    """A scheduler's SIGTERM in the middle of writing an output: one line, status 143, and neither the
    output nor its temporary file left (the default action would kill the process mid-write)."""
    import os
    import signal
    import time

    import pipeline.cli as cli
    from pipeline.io import atomic_output

    out = tmp_path / "m.json"

    def writing(a):
        with atomic_output(out) as tmp:
            tmp.write_text("{half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "cmd_evaluate", writing)
    assert main(["evaluate", "x.h5", "-o", str(out)]) == 143
    assert _err(capsys).startswith("cmimh: terminated (SIGTERM)")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("argv, needle", [
    (["report", "--results", "r", "--dataset", "d", "--bits", "abc", "-o", "r.md"], "argument --bits: invalid int value"),
    (["report", "--results", "r", "--dataset", "d", "--bits", "0", "-o", "r.md"], "--bits: a code length is between 1"),
    (["report", "--results", "r", "--dataset", "d", "--bits", "8", "--k", "0", "-o", "r.md"], "--k must be >= 1"),
    (["study", "code_lengths", "--results", "r", "--k", "0", "-o", "s.md"], "--k must be >= 1"),
])
def test_report_and_study_numbers_are_checked(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    with contextlib.suppress(SystemExit):  # argparse's own one line exits 2
        assert main(argv) == 2
    line = _err(capsys)
    assert needle in line and "unexpected" not in line, line


def test_a_forked_worker_ends_on_sigterm_as_it_always_did(tmp_path, monkeypatch, capsys):
    """DataLoader workers are forks of the stage (num_workers > 0) and share its SIGTERM handler:
    a worker killed with the job's process group just ends (no Terminated traceback of its own)."""
    import multiprocessing as mp
    import os
    import signal
    import time

    import pipeline.cli as cli

    codes = {}

    def with_worker(a):
        ctx = mp.get_context("fork")
        p = ctx.Process(target=time.sleep, args=(30,))
        p.start()
        time.sleep(0.3)
        os.kill(p.pid, signal.SIGTERM)
        p.join(10)
        codes["worker"] = p.exitcode

    monkeypatch.setattr(cli, "cmd_evaluate", with_worker)
    assert main(["evaluate", "x.h5", "-o", str(tmp_path / "m.json")]) == 0
    assert codes["worker"] == -signal.SIGTERM
    assert "Terminated" not in capsys.readouterr().err
