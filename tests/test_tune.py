"""Hyper-parameter selection on a validation split of the database (pipeline/tune.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import tune as T
from pipeline.config import method_settings
from pipeline.errors import PipelineError

TINY_CMIMH = {"hidden": 8, "critic_hidden": 8, "critic_dim": 8, "disc_hidden": 8, "batch_size": 10, "epochs": 1,
              "weights": {"rec": 1.0, "mi": 1.0, "kl": 0.5, "tc": 0.1, "bal": 0.1}, "lr": 0.001, "lr_decoder": 0.001}


def _train_settings() -> dict:
    return {"dataset": "demo", "seed": 3, "device": "cpu", "cmimh": json.loads(json.dumps(TINY_CMIMH))}


def _tune(**over) -> dict:
    t = {**T.TUNE_DEFAULTS, "grid": {"mi": [1, 2], "kl": [0.5]}, "val_queries": 10, "folds": 1, "bits": 4,
         "epochs": None, "train_size": None, "dataset": "demo", "seed": 3, "eval_k": 1000}
    t.update(over)
    return t


# ----------------------------------------------------------------------------- grid
def test_grid_points_follow_the_fixed_key_order_last_key_fastest():
    pts = T.grid_points({"lr": [0.001, 0.0001], "mi": [1, 2]})  # dict order does not matter
    assert pts == [{"mi": 1.0, "lr": 0.001}, {"mi": 1.0, "lr": 0.0001}, {"mi": 2.0, "lr": 0.001},
                   {"mi": 2.0, "lr": 0.0001}]
    assert [T.point_name(p) for p in pts] == ["mi1-lr0.001", "mi1-lr0.0001", "mi2-lr0.001", "mi2-lr0.0001"]
    assert len(T.grid_points({"mi": [0.5, 1, 2], "kl": [0.1, 0.5, 1], "lr": [1e-4, 1e-3]})) == 18


@pytest.mark.parametrize("grid, needle", [
    ({}, "at least one"), ({"nope": [1]}, "unknown key 'nope'"), ({"mi": []}, "non-empty list"),
    ({"mi": [-1]}, "numbers >= 0"), ({"lr": [0]}, "lr > 0"), ({"mi": [1, 1.0]}, "repeated value"),
])
def test_bad_grids_are_one_line_errors(grid, needle):
    with pytest.raises(PipelineError, match=needle):
        T.grid_points(grid)


def test_point_settings_match_the_method_variant_of_the_same_name():
    """A point named mi2-kl0.1-lr0.0001 sets what method cmimh-mi2-kl0.1-lr0.0001 sets (config.py)."""
    s = _train_settings()
    for p in T.grid_points({"mi": [2], "kl": [0.1], "tc": [0], "lr": [0.0001]}):
        mine = T.point_settings(s, p, {"epochs": None})["cmimh"]
        theirs = method_settings(s, "cmimh-" + T.point_name(p))["cmimh"]
        assert mine == theirs
        assert mine["weights"] == {"rec": 1.0, "mi": 2.0, "kl": 0.1, "tc": 0.0, "bal": 0.1}
        assert mine["lr"] == mine["lr_decoder"] == 0.0001
    assert s["cmimh"]["weights"]["mi"] == 1.0  # the input is not modified
    assert T.point_settings(s, {"mi": 1.0}, {"epochs": 7})["cmimh"]["epochs"] == 7


def test_point_names_round_trip_and_unknown_points_fail():
    grid = {"mi": [0.5, 1], "lr": [0.001]}
    for p in T.grid_points(grid):
        assert T.point_from_name(T.point_name(p), grid) == p
    with pytest.raises(PipelineError, match="not in the grid"):
        T.point_from_name("mi3-lr0.001", grid)
    cut = T.tune_for_point(_tune(grid=grid), "mi1-lr0.001")
    assert cut["grid"] == {"mi": [1.0], "lr": [0.001]} and cut["val_queries"] == 10


def test_resolve_tune_merges_levels_and_a_grid_replaces_the_grid_below():
    cfg = {"dataset": "demo", "seed": 5, "tune": {"grid": {"mi": [1, 2], "lr": [0.001]}, "bits": 16},
           "datasets": {"demo": {"source": "demo", "tune": {"val_queries": 400, "grid": {"kl": [0.5]}}},
                        "big": {"source": "demo"}}}
    t = T.resolve_tune(cfg, "demo")
    assert t["grid"] == {"kl": [0.5]} and t["val_queries"] == 400 and t["bits"] == 16 and t["seed"] == 5
    b = T.resolve_tune(cfg, "big")
    assert b["grid"] == {"mi": [1, 2], "lr": [0.001]} and b["val_queries"] == T.TUNE_DEFAULTS["val_queries"]


# ----------------------------------------------------------------------------- validation split
def test_validation_split_is_carved_from_the_database_only():
    database = np.arange(100, 300, 2)  # 100 rows; the queries (not passed) are other rows
    sp = T.validation_split(database, 20, 50, seed=1)
    q, db, tr = sp["query"], sp["database"], sp["train"]
    assert len(q) == 20 and len(db) == 80 and len(tr) == 50
    assert not set(q) & set(db)                                  # disjoint
    assert set(q) | set(db) == set(database)                     # a partition of the database
    assert set(tr) <= set(db)                                    # training pairs from the rest
    assert all(np.all(np.diff(a) > 0) for a in (q, db, tr))      # sorted, no repeats
    # seeded: the same seed gives the same split, another seed another one
    again = T.validation_split(database, 20, 50, seed=1)
    assert all(np.array_equal(sp[k], again[k]) for k in sp)
    assert not np.array_equal(T.validation_split(database, 20, 50, seed=2)["query"], q)
    # the training size does not move the validation queries (every grid point sees the same split)
    assert np.array_equal(T.validation_split(database, 20, None, seed=1)["query"], q)
    assert np.array_equal(T.validation_split(database, 20, None, seed=1)["train"], db)
    assert np.array_equal(T.validation_split(database, 20, 500, seed=1)["train"], db)


def test_validation_folds_have_disjoint_queries():
    database = np.arange(60)
    qs = [T.validation_split(database, 15, None, seed=0, fold=f, folds=4)["query"] for f in range(4)]
    assert sorted(np.concatenate(qs).tolist()) == list(range(60))
    with pytest.raises(PipelineError, match="does not fit"):
        T.validation_split(database, 20, None, seed=0, fold=0, folds=4)
    with pytest.raises(PipelineError, match="does not fit"):
        T.validation_split(database, 60, None, seed=0)
    with pytest.raises(PipelineError, match="fold 4 is not in 0..3"):
        T.validation_split(database, 10, None, seed=0, fold=4, folds=4)


class _NoQueryFeatures:
    """Features whose query rows must never be read (touching `query` fails the test)."""

    def __init__(self, n: int = 70, n_query: int = 10, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.image = rng.normal(size=(n, 6)).astype(np.float32)
        self.text = (self.image[:, :5] + 0.3 * rng.normal(size=(n, 5))).astype(np.float32)
        self.labels = (rng.random((n, 3)) < 0.5).astype(np.uint8)
        self._query = np.arange(n_query)
        self.database = np.arange(n_query, n)
        self.train = np.arange(n_query, n_query + 40)

    @property
    def query(self):
        raise AssertionError("the tune code read features.query")


def _tune_all(feats, tune) -> tuple[list[dict], dict]:
    recs = [T.run_point(feats, _train_settings(), tune, T.point_name(p), 0, torch.device("cpu"))
            for p in T.grid_points(tune["grid"])]
    return recs, T.select(recs, tune)


def test_tuning_never_reads_the_queries():
    feats = _NoQueryFeatures()
    tune = _tune()
    recs, sel = _tune_all(feats, tune)
    assert [r["point"] for r in recs] == ["mi1-kl0.5", "mi2-kl0.5"]
    for r in recs:
        assert r["n_val_queries"] == 10 and r["n_val_database"] == 50 and r["n_train"] == 40
        assert 0 <= r["score"] <= 1 and r["score"] == pytest.approx((r["map@1000"]["i2t"] + r["map@1000"]["t2i"]) / 2)
    # changing the query rows' features and labels changes nothing: same scores, same choice
    feats.image[feats._query] = 1e3
    feats.text[feats._query] = -1e3
    feats.labels[feats._query] = 1 - feats.labels[feats._query]
    recs2, sel2 = _tune_all(feats, tune)
    assert [r["map@1000"] for r in recs2] == [r["map@1000"] for r in recs]
    assert sel2["chosen"]["point"] == sel["chosen"]["point"]


# ----------------------------------------------------------------------------- selection
def _rec(point: str, fold: int, i2t: float, t2i: float, tune: dict) -> dict:
    maps = {"i2t": i2t, "t2i": t2i, "i2i": 0.5, "t2t": 0.5}
    return {"point": point, "fold": fold, "map@1000": maps, "score": (i2t + t2i) / 2,
            "validation": T._validation_keys(tune)}


def test_select_best_mean_score_ties_go_to_grid_order():
    tune = _tune(grid={"mi": [1, 2], "kl": [0.5]})
    recs = [_rec("mi2-kl0.5", 0, 0.7, 0.5, tune), _rec("mi1-kl0.5", 0, 0.5, 0.7, tune)]  # both 0.6
    sel = T.select(recs, tune)
    assert sel["chosen"]["point"] == "mi1-kl0.5"  # the tie goes to the first in grid order
    assert [row["point"] for row in sel["table"]] == ["mi1-kl0.5", "mi2-kl0.5"]
    recs[0] = _rec("mi2-kl0.5", 0, 0.72, 0.5, tune)  # 0.61
    assert T.select(recs, tune)["chosen"]["point"] == "mi2-kl0.5"


def test_select_averages_folds():
    tune = _tune(grid={"mi": [1, 2]}, folds=2)
    recs = [_rec("mi1", 0, 0.9, 0.9, tune), _rec("mi1", 1, 0.1, 0.1, tune),   # mean 0.5
            _rec("mi2", 0, 0.6, 0.6, tune), _rec("mi2", 1, 0.6, 0.4, tune)]   # mean (0.6 + 0.5) / 2 = 0.55
    sel = T.select(recs, tune)
    assert sel["chosen"]["point"] == "mi2" and sel["chosen"]["score"] == pytest.approx(0.55)
    assert sel["table"][0]["score"] == pytest.approx(0.5) and sel["table"][0]["fold_scores"] == [0.9, 0.1]
    assert sel["table"][1]["map@1000"]["t2i"] == pytest.approx(0.5)


def test_select_rejects_missing_duplicate_stale_and_foreign_records():
    tune = _tune(grid={"mi": [1, 2]})
    good = [_rec("mi1", 0, 0.5, 0.5, tune), _rec("mi2", 0, 0.5, 0.5, tune)]
    with pytest.raises(PipelineError, match="no record of point mi2 fold 0"):
        T.select(good[:1], tune)
    with pytest.raises(PipelineError, match="two records of mi1 fold 0"):
        T.select(good + good[:1], tune)
    with pytest.raises(PipelineError, match="not in the grid"):
        T.select(good + [_rec("mi3", 0, 0.5, 0.5, tune)], tune)
    stale = _rec("mi2", 0, 0.5, 0.5, {**tune, "epochs": 3})
    with pytest.raises(PipelineError, match="other validation settings"):
        T.select([good[0], stale], tune)


def test_select_stage_writes_choice_table_and_plot(tmp_path):
    tune = _tune(grid={"mi": [1, 2], "kl": [0.5]})
    paths = []
    for name, (a, b) in (("mi1-kl0.5", (0.4, 0.6)), ("mi2-kl0.5", (0.8, 0.6))):
        p = tmp_path / "tune" / name / "fold0.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(_rec(name, 0, a, b, tune)))
        paths.append(p)
    out = tmp_path / "tune/cmimh.json"
    rec = T.select_stage(paths, tune, out, tmp_path / "studies/tune.md", tmp_path / "studies/tune.png")
    saved = json.loads(out.read_text())
    assert saved["chosen"]["settings"] == {"mi": 2.0, "kl": 0.5} and saved["format"] == T.TUNE_FORMAT
    assert len(saved["table"]) == 2 and saved["dataset"] == "demo" and saved == json.loads(json.dumps(rec))
    assert [i["path"] for i in saved["provenance"]["inputs"]] == [str(p) for p in paths]
    md = (tmp_path / "studies/tune.md").read_text()
    assert "| # | mi | kl | Img→Txt | Txt→Img | Img→Img | Txt→Txt | score |" in md
    assert "| 1 | 1 | 0.5 | 40.00 | 60.00 | 50.00 | 50.00 | 50.00 |" in md
    assert "| 2 (chosen) | 2 | 0.5 | 80.00 | 60.00 | 50.00 | 50.00 | **70.00** |" in md
    assert "never used" in md
    assert (tmp_path / "studies/tune.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- applying
def _tuned_file(tmp_path: Path, chosen: dict, dataset: str = "demo") -> Path:
    p = tmp_path / "cmimh.json"
    p.write_text(json.dumps({"format": T.TUNE_FORMAT, "dataset": dataset,
                             "chosen": {"point": T.point_name(chosen), "settings": chosen, "score": 0.5}}))
    return p


def test_apply_tuned_then_name_variants_win(tmp_path):
    f = _tuned_file(tmp_path, {"mi": 2.0, "kl": 0.1, "lr": 0.0001})
    s = T.tuned_settings(_train_settings(), "cmimh-tuned", str(f))
    c = s["cmimh"]
    assert c["weights"] == {"rec": 1.0, "mi": 2.0, "kl": 0.1, "tc": 0.1, "bal": 0.1}
    assert c["lr"] == c["lr_decoder"] == 0.0001 and c["epochs"] == 1  # tune.epochs never reaches training
    assert s["tuned"]["point"] == "mi2-kl0.1-lr0.0001"
    # cmd_train's order: the file first, then the name's variants (cmimh-kl1-tuned keeps kl = 1)
    s2 = method_settings(T.tuned_settings(_train_settings(), "cmimh-kl1-tuned", str(f)), "cmimh-kl1-tuned")
    assert s2["cmimh"]["weights"]["kl"] == 1.0 and s2["cmimh"]["weights"]["mi"] == 2.0
    # a plain method is untouched
    assert T.tuned_settings(_train_settings(), "cmimh", None) == _train_settings()


@pytest.mark.parametrize("method, with_file, dataset, needle", [
    ("cmimh-tuned", False, "demo", "needs --tuned FILE"),
    ("cmimh", True, "demo", "only to a method ending in -tuned"),
    ("cvh-tuned", True, "demo", "only cmimh has a tune target"),
    ("cmimh-tuned", True, "mirflickr25k", "tuned on data set 'mirflickr25k', not 'demo'"),
])
def test_tuned_settings_errors(tmp_path, method, with_file, dataset, needle):
    f = _tuned_file(tmp_path, {"mi": 2.0}, dataset=dataset)
    with pytest.raises(PipelineError, match=needle):
        T.tuned_settings(_train_settings(), method, str(f) if with_file else None)


def test_load_tuned_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        T.load_tuned(tmp_path / "absent.json")
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(PipelineError, match="is not a tune result"):
        T.load_tuned(tmp_path / "x.json")


def test_cli_tune_point_select_and_train_tuned(tmp_path):
    """The thin CLI end to end on a tiny features file: point jobs, selection, `train --tuned`."""
    from conftest import make_features_h5
    from pipeline.cli import main
    from pipeline.methods import load_trained

    feats = make_features_h5(tmp_path / "f.h5", n=60, splits=True)  # queries 0..9, database 10..59
    s = json.dumps(_train_settings())
    tune = _tune(grid={"mi": [1, 2]}, val_queries=10)
    recs = []
    for name in ("mi1", "mi2"):
        out = tmp_path / f"tune/{name}/fold0.json"
        rc = main(["tune", "point", "--settings", s, "--tune", json.dumps(T.tune_for_point(tune, name)),
                   "--features", str(feats), "--point", name, "--fold", "0", "--no-progress", "-o", str(out)])
        assert rc == 0 and json.loads(out.read_text())["n_val_database"] == 40
        recs.append(str(out))
    chosen = tmp_path / "tune/cmimh.json"
    assert main(["tune", "select", "--tune", json.dumps(tune), "--records", *recs, "-o", str(chosen)]) == 0
    pick = json.loads(chosen.read_text())["chosen"]["settings"]["mi"]
    model = tmp_path / "m.pt"
    assert main(["train", "--settings", s, "--features", str(feats), "--method", "cmimh-tuned", "--bits", "4",
                 "--tuned", str(chosen), "--no-progress", "-o", str(model)]) == 0
    _, meta = load_trained(model, torch.device("cpu"))
    assert meta["config"]["cmimh"]["weights"]["mi"] == pick and meta["config"]["tuned"]["point"] == f"mi{pick:g}"
    assert main(["train", "--settings", s, "--features", str(feats), "--method", "cmimh-tuned", "--bits", "4",
                 "--no-progress", "-o", str(model)]) == 2


@pytest.mark.parametrize("edit, needle", [
    (lambda r: [r], "not a metrics record (a JSON list, not an object)"),
    (lambda r: {**r, "score": "high"}, "score = 'high' is not a number between 0 and 1"),
    (lambda r: {k: v for k, v in r.items() if k != "point"}, "no grid point name (point = None)"),
    (lambda r: {**r, "fold": "0"}, "fold = '0' is not a fold number"),
    (lambda r: {k: v for k, v in r.items() if k != "map@1000"}, "no map@1000"),
    (lambda r: {**r, "map@1000": {**r["map@1000"], "i2t": "x"}}, "map@1000.i2t = 'x' is not a number"),
])
def test_select_stage_names_a_damaged_record(tmp_path, edit, needle):
    """A record the selection cannot use: one line naming its file, not an unexpected AttributeError
    (a list) or TypeError (a string score averaged with numbers)."""
    tune = _tune(grid={"mi": [1, 2], "kl": [0.5]})
    paths = []
    for name in ("mi1-kl0.5", "mi2-kl0.5"):
        p = tmp_path / name / "fold0.json"
        p.parent.mkdir(parents=True)
        r = _rec(name, 0, 0.4, 0.6, tune)
        p.write_text(json.dumps(edit(r) if name == "mi2-kl0.5" else r))
        paths.append(p)
    with pytest.raises(PipelineError) as e:
        T.select_stage(paths, tune, tmp_path / "cmimh.json")
    assert str(e.value).startswith(f"{paths[1]}: not a tune record: ") and needle in str(e.value), str(e.value)
    assert not (tmp_path / "cmimh.json").exists()
