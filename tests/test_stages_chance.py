"""The chance level computed once per split and code length (rule ``chance``, ``cmimh chance``) and
read by every method's evaluate (``--chance``): the same numbers as computing it in evaluate, and
a file that does not fit the codes refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.stages import chance_split, resolve
from pipeline.stages.evaluate import labels_sha256

from conftest import make_features_h5

VAL = {"val_queries": 8, "folds": 2, "fold": 1}


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    from pipeline.stages import extract

    d = tmp_path_factory.mktemp("chance")
    out = d / "features.h5"
    extract.run_import(make_features_h5(d / "src.h5", n=80, dx=12, dy=9), {"dataset": "x", "seed": 0, "n_query": 12,
                                                                        "n_train": 40}, out)
    return out


def _codes(tmp_path, features, method="cvh", bits=8, validation=None):
    s = {"dataset": "x", "seed": 0, "device": "cpu", "method": method, "settings": {}}
    if validation is not None:
        s["validation"] = {**validation, "train_size": None}
    s = json.dumps(s)
    model, codes = tmp_path / f"{method}{bits}.pt", tmp_path / f"{method}{bits}.h5"
    assert main(["train", "--settings", s, "--features", str(features), "--bits", str(bits), "--method", method,
                 "--no-progress", "-o", str(model)]) == 0
    assert main(["encode", "--settings", s, "--model", str(model), "--features", str(features), "--method", method,
                 "-o", str(codes)]) == 0
    return codes


def _chance(tmp_path, features, bits, k, split="test", validation=None):
    s = {"dataset": "x", "seed": 0, "eval_k": k, "split": split, **({"validation": validation} if validation else {})}
    out = tmp_path / f"chance_{split}_{bits}.json"
    assert main(["chance", "--settings", json.dumps(s), "--features", str(features), "--bits", str(bits),
                 "-o", str(out)]) == 0
    return out


def _evaluate(codes, out, k, chance=None):
    assert main(["evaluate", str(codes), "--k", str(k), "-o", str(out), *(["--chance", str(chance)] if chance else [])]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("split", ["test", "val1"])
def test_chance_file_gives_the_numbers_evaluate_computes(tmp_path, features, split):
    """Exactly (==) the chance values evaluate computes itself, and every other metric unchanged."""
    val = VAL if split != "test" else None
    codes = _codes(tmp_path, features, "cvh-val1" if val else "cvh", 8, val)
    chance = _chance(tmp_path, features, 8, 20, split, val)
    rec = json.loads(chance.read_text())
    assert rec["split"] == split and rec["bits"] == 8 and rec["k"] == 20 and rec["labelled"]
    assert (rec["n_query"], rec["n_db"]) == ((8, 60) if val else (12, 68))
    before = _evaluate(codes, tmp_path / "before.json", 20)
    after = _evaluate(codes, tmp_path / "after.json", 20, chance)
    assert after["chance"] == before["chance"] and set(after["chance"]) == {"map@20", "pair_map"}
    assert all(0 < v < 1 for v in after["chance"]["map@20"].values())
    for key in set(before) - {"seconds", "provenance"}:
        assert after[key] == before[key], key
    assert after["provenance"]["chance_file"] == str(chance) and len(after["provenance"]["chance_sha256"]) == 64
    assert "chance_file" in before["provenance"] and before["provenance"]["chance_file"] is None


def test_one_chance_file_serves_every_method(tmp_path, features):
    chance = _chance(tmp_path, features, 8, 20)
    a = _evaluate(_codes(tmp_path, features, "cvh", 8), tmp_path / "a.json", 20, chance)
    b = _evaluate(_codes(tmp_path, features, "lsh", 8), tmp_path / "b.json", 20, chance)
    assert a["chance"] == b["chance"] and a["map@20"] != b["map@20"]


@pytest.mark.parametrize("change, what", [("bits", "its bits is 16, the codes' 8"), ("k", "its k is 50, the codes' 20"),
                                          ("split", "its split (the labels of queries and database)"),
                                          ("dataset", "its dataset is 'other', the codes' 'x'"),
                                          ("seed", "its seed is 7")])
def test_a_chance_file_that_does_not_fit_is_one_line(tmp_path, features, capsys, change, what):
    codes = _codes(tmp_path, features, "cvh", 8)
    if change == "bits":
        chance = _chance(tmp_path, features, 16, 20)
    elif change == "k":
        chance = _chance(tmp_path, features, 8, 50)
    elif change == "split":  # same sizes, other labels: only the checksum tells
        chance = _chance(tmp_path, features, 8, 20)
        rec = json.loads(chance.read_text())
        rec["labels_sha256"] = "0" * 64
        chance.write_text(json.dumps(rec))
    else:
        chance = _chance(tmp_path, features, 8, 20)
        rec = json.loads(chance.read_text())
        rec.update({"dataset": "other"} if change == "dataset" else {"seed": 7})
        chance.write_text(json.dumps(rec))
    capsys.readouterr()
    out = tmp_path / "m.json"
    assert main(["evaluate", str(codes), "--k", "20", "--chance", str(chance), "-o", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"cmimh: error: chance file {chance} does not fit the codes: {what}"), line
    assert not out.exists()


def test_missing_or_foreign_chance_file(tmp_path, features, capsys):
    codes = _codes(tmp_path, features, "cvh", 8)
    assert main(["evaluate", str(codes), "--chance", str(tmp_path / "none.json"), "-o", str(tmp_path / "m.json")]) == 2
    assert "missing chance file" in capsys.readouterr().err
    (tmp_path / "x.json").write_text('{"a": 1}')
    assert main(["evaluate", str(codes), "--chance", str(tmp_path / "x.json"), "-o", str(tmp_path / "m.json")]) == 2
    assert "not a cmimh-chance/1 file" in capsys.readouterr().err


def test_resolve_chance_and_the_split_of_a_method():
    cfg = {"dataset": "demo", "seed": 3, "eval_k": 100, "tune": {"folds": 2, "val_queries": 50},
           "datasets": {"demo": {"source": "demo"}}, "methods": ["cvh"], "code_lengths": [8]}
    assert resolve(cfg, "demo", "chance", split="test") == {"dataset": "demo", "seed": 3, "eval_k": 100,
                                                           "split": "test"}
    assert resolve(cfg, "demo", "chance", split="val1")["validation"] == {"val_queries": 50, "folds": 2, "fold": 1}
    with pytest.raises(PipelineError, match="unknown split 'train'"):
        resolve(cfg, "demo", "chance", split="train")
    with pytest.raises(PipelineError, match="fold 2 is not in 0..1"):
        resolve(cfg, "demo", "chance", split="val2")
    assert chance_split("cmimh") == "test" and chance_split("cmimh-mi1-val1") == "val1"
    assert chance_split("cvh-ntrain500") == "test"


def test_labels_sha256_sees_shape_and_values():
    q, db = np.eye(3, dtype=np.uint8), np.ones((4, 3), np.uint8)
    assert labels_sha256(q, db) == labels_sha256(q.astype(bool), db.copy())
    flipped = db.copy()
    flipped[2, 1] = 0
    assert labels_sha256(q, flipped) != labels_sha256(q, db)
    assert labels_sha256(q[:, :0], db[:, :0]) != labels_sha256(q[:0, :0], db[:, :0])  # no labels: the sizes count
