"""`cmimh` subcommands: user errors are one line on stderr with exit status 2, never a traceback."""

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
    assert "code length must be >= 1" in _err(capsys)
    assert not (tmp_path / "m.pt").exists()
    # and a valid call trains, writes the model and the log
    assert main(["train", "--settings", s, "--features", str(feats), "--bits", "8", "--no-progress",
                 "--log-csv", str(tmp_path / "log.csv"), "-o", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "log.csv").read_text().startswith("epoch,")
