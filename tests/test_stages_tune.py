"""Hyper-parameter selection (pipeline/stages/tune.py and the Tune study of
pipeline/report/studies.py): grid points are method variants, validation runs never read the
queries, the selection and its files, and -tuned runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import dataset_view
from pipeline.data.splits import validation_split
from pipeline.errors import PipelineError
from pipeline.methods import parse_method
from pipeline.report import studies as S
from pipeline.stages import resolve
from pipeline.stages import tune as T
from pipeline.stages.train import training_rows, validation_rows

from conftest import REPO

TINY_CMIMH = {"hidden": 8, "critic_hidden": 8, "critic_dim": 8, "disc_hidden": 8, "batch_size": 10, "epochs": 1}


def _tune(**over) -> dict:
    t = {**S.TUNE_DEFAULTS, "grid": {"cmimh": {"mi": [1, 2], "kl": [0.5]}}, "val_queries": 10, "folds": 1, "bits": 4,
         "epochs": None, "train_size": None, "dataset": "demo", "seed": 3, "eval_k": 1000}
    t.update(over)
    return t


# ----------------------------------------------------------------------------- grid
def test_grid_points_follow_the_methods_variant_order_last_key_fastest():
    pts = S.grid_points("cmimh", {"lr": [0.001, 0.0001], "mi": [1, 2]})  # dict order does not matter
    assert pts == [{"mi": 1.0, "lr": 0.001}, {"mi": 1.0, "lr": 0.0001}, {"mi": 2.0, "lr": 0.001},
                   {"mi": 2.0, "lr": 0.0001}]
    assert [S.point_name(p) for p in pts] == ["mi1-lr0.001", "mi1-lr0.0001", "mi2-lr0.001", "mi2-lr0.0001"]
    assert len(S.grid_points("cmimh", {"mi": [0.5, 1, 2], "kl": [0.1, 0.5, 1], "lr": [1e-4, 1e-3]})) == 18
    assert S.grid_points("cvh", {"reg": [0.1, 1]}) == [{"reg": 0.1}, {"reg": 1.0}]  # any method with variants


@pytest.mark.parametrize("method, grid, needle", [
    ("cmimh", {}, "at least one"), ("cmimh", {"nope": [1]}, "unknown key 'nope'"), ("cmimh", {"mi": []}, "non-empty"),
    ("cmimh", {"mi": [-1]}, "numbers >= 0"), ("cmimh", {"lr": [0]}, "lr > 0"), ("cmimh", {"mi": [1, 1.0]}, "repeated"),
    ("nosuch", {"mi": [1]}, "unknown method 'nosuch'"), ("cvh", {"mi": [1]}, "unknown key 'mi'"),
])
def test_bad_grids_are_one_line_errors(method, grid, needle):
    with pytest.raises(PipelineError, match=needle):
        S.grid_points(method, grid)


def test_a_grid_point_is_just_a_method_variant_name():
    """The run of point mi2-kl0.1-lr0.0001 on fold 0 is method cmimh-mi2-kl0.1-lr0.0001-val0, whose
    settings are those of cmimh-mi2-kl0.1-lr0.0001; tune.epochs gives the validation runs -epochs<n>."""
    t = _tune(grid={"cmimh": {"mi": [2], "kl": [0.1], "lr": [0.0001]}}, epochs=7)
    (run,) = S.study_runs("tune", t)
    assert run.method == "cmimh-mi2-kl0.1-lr0.0001-epochs7-val0" and run.bits == 4
    c = parse_method(run.method).config(TINY_CMIMH)
    assert c == parse_method("cmimh-mi2-kl0.1-lr0.0001-epochs7").config(TINY_CMIMH)
    assert (c.weights.mi, c.weights.kl, c.lr, c.lr_decoder, c.epochs) == (2.0, 0.1, 0.0001, 0.0001, 7)
    assert [r.method for r in S.study_runs("tune", _tune(folds=2))] == [
        "cmimh-mi1-kl0.5-val0", "cmimh-mi1-kl0.5-val1", "cmimh-mi2-kl0.5-val0", "cmimh-mi2-kl0.5-val1"]


def test_tune_settings_merge_levels_and_a_grid_replaces_the_grid_below():
    cfg = {"dataset": "demo", "seed": 5, "tune": {"grid": {"cmimh": {"mi": [1, 2], "lr": [0.001]}}, "bits": 16},
           "datasets": {"demo": {"source": "demo", "tune": {"val_queries": 400, "grid": {"cmimh": {"kl": [0.5]}}}},
                        "big": {"source": "demo"}}}
    t = S.tune_settings(dataset_view(cfg, "demo"), cfg)
    assert t["grid"] == {"cmimh": {"kl": [0.5]}} and t["val_queries"] == 400 and t["bits"] == 16 and t["seed"] == 5
    b = S.tune_settings(dataset_view(cfg, "big"), cfg)
    assert b["grid"] == {"cmimh": {"mi": [1, 2], "lr": [0.001]}} and b["val_queries"] == S.TUNE_DEFAULTS["val_queries"]


# ----------------------------------------------------------------------------- validation split
def test_validation_split_is_carved_from_the_database_only():
    database = np.arange(100, 300, 2)  # 100 rows; the queries (not passed) are other rows
    sp = validation_split(database, 20, 50, seed=1)
    q, db, tr = sp["query"], sp["database"], sp["train"]
    assert len(q) == 20 and len(db) == 80 and len(tr) == 50
    assert not set(q) & set(db)                                  # disjoint
    assert set(q) | set(db) == set(database)                     # a partition of the database
    assert set(tr) <= set(db)                                    # training pairs from the rest
    assert all(np.all(np.diff(a) > 0) for a in (q, db, tr))      # sorted, no repeats
    again = validation_split(database, 20, 50, seed=1)
    assert all(np.array_equal(sp[k], again[k]) for k in sp)
    assert not np.array_equal(validation_split(database, 20, 50, seed=2)["query"], q)
    # the training size does not move the validation queries (every grid point sees the same split)
    assert np.array_equal(validation_split(database, 20, None, seed=1)["query"], q)
    assert np.array_equal(validation_split(database, 20, None, seed=1)["train"], db)
    assert np.array_equal(validation_split(database, 20, 500, seed=1)["train"], db)


def test_validation_folds_have_disjoint_queries():
    database = np.arange(60)
    qs = [validation_split(database, 15, None, seed=0, fold=f, folds=4)["query"] for f in range(4)]
    assert sorted(np.concatenate(qs).tolist()) == list(range(60))
    with pytest.raises(PipelineError, match="does not fit"):
        validation_split(database, 20, None, seed=0, fold=0, folds=4)
    with pytest.raises(PipelineError, match="does not fit"):
        validation_split(database, 60, None, seed=0)
    with pytest.raises(PipelineError, match="fold 4 is not in 0..3"):
        validation_split(database, 10, None, seed=0, fold=4, folds=4)


class _NoQueryFeatures:
    """Features whose query rows must never be read (touching `query` fails the test)."""

    def __init__(self, n: int = 70, n_query: int = 10):
        self.database = np.arange(n_query, n)
        self.train = np.arange(n_query, n_query + 40)

    @property
    def query(self):
        raise AssertionError("the tune code read features.query")


def test_validation_runs_never_read_the_queries():
    f = _NoQueryFeatures()
    s = {"seed": 3, "validation": {"val_queries": 10, "folds": 1, "fold": 0, "train_size": None}}
    split = validation_rows(f, s)
    assert len(split["query"]) == 10 and len(split["database"]) == 50 and len(split["train"]) == 40
    assert set(split["query"]) | set(split["database"]) == set(f.database)
    assert np.array_equal(training_rows(f, s), split["train"])


# ----------------------------------------------------------------------------- selection
def _put(results: Path, method: str, bits: int, i2t: float, t2i: float) -> None:
    p = results / method / str(bits) / "metrics.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"map@1000": {"i2t": i2t, "t2i": t2i, "i2i": 0.5, "t2t": 0.5}}))


def test_select_best_mean_score_ties_go_to_grid_order(tmp_path):
    t = _tune()
    _put(tmp_path, "cmimh-mi2-kl0.5-val0", 4, 0.7, 0.5)
    _put(tmp_path, "cmimh-mi1-kl0.5-val0", 4, 0.5, 0.7)  # both 0.6
    sel = T.run(t, tmp_path, tmp_path / "tune")["cmimh"]
    assert sel["chosen"]["point"] == "mi1-kl0.5"  # the tie goes to the first in grid order
    assert [row["point"] for row in sel["table"]] == ["mi1-kl0.5", "mi2-kl0.5"]
    _put(tmp_path, "cmimh-mi2-kl0.5-val0", 4, 0.72, 0.5)  # 0.61
    assert T.run(t, tmp_path, tmp_path / "tune")["cmimh"]["chosen"]["point"] == "mi2-kl0.5"


def test_select_averages_folds(tmp_path):
    t = _tune(grid={"cmimh": {"mi": [1, 2]}}, folds=2)
    for name, f, a, b in (("mi1", 0, 0.9, 0.9), ("mi1", 1, 0.1, 0.1), ("mi2", 0, 0.6, 0.6), ("mi2", 1, 0.6, 0.4)):
        _put(tmp_path, f"cmimh-{name}-val{f}", 4, a, b)
    sel = T.run(t, tmp_path, tmp_path / "tune")["cmimh"]
    assert sel["chosen"]["point"] == "mi2" and sel["chosen"]["score"] == pytest.approx(0.55)
    assert sel["table"][0]["score"] == pytest.approx(0.5) and sel["table"][0]["fold_scores"] == [0.9, 0.1]
    assert sel["table"][1]["map@1000"]["t2i"] == pytest.approx(0.5)


def test_select_needs_every_point_and_fold(tmp_path):
    _put(tmp_path, "cmimh-mi1-kl0.5-val0", 4, 0.5, 0.5)
    with pytest.raises(PipelineError, match=r"missing metrics file: .*cmimh-mi2-kl0.5-val0/4/metrics.json"):
        T.run(_tune(), tmp_path, tmp_path / "tune")
    assert not (tmp_path / "tune").exists()


def test_tune_stage_writes_choice_table_and_plot(tmp_path):
    t = _tune(grid={"cmimh": {"mi": [1, 2], "kl": [0.5]}, "cvh": {"reg": [0.1]}})
    _put(tmp_path, "cmimh-mi1-kl0.5-val0", 4, 0.4, 0.6)
    _put(tmp_path, "cmimh-mi2-kl0.5-val0", 4, 0.8, 0.6)
    _put(tmp_path, "cvh-reg0.1-val0", 4, 0.3, 0.3)
    T.run(t, tmp_path, tmp_path / "tune", tmp_path / "studies/tune.md", tmp_path / "studies/tune.png")
    saved = json.loads((tmp_path / "tune/cmimh.json").read_text())
    assert saved["chosen"]["variants"] == {"mi": 2.0, "kl": 0.5} and saved["format"] == S.TUNE_FORMAT
    assert len(saved["table"]) == 2 and saved["dataset"] == "demo" and saved["method"] == "cmimh"
    assert [i["path"] for i in saved["provenance"]["inputs"]] == [
        str(tmp_path / f"cmimh-mi{m}-kl0.5-val0/4/metrics.json") for m in (1, 2)]
    assert json.loads((tmp_path / "tune/cvh.json").read_text())["chosen"]["variants"] == {"reg": 0.1}
    md = (tmp_path / "studies/tune.md").read_text()
    assert "| # | mi | kl | Img→Txt | Txt→Img | Img→Img | Txt→Txt | score |" in md
    assert "| 1 | 1 | 0.5 | 40.00 | 60.00 | 50.00 | 50.00 | 50.00 |" in md
    assert "| 2 (chosen) | 2 | 0.5 | 80.00 | 60.00 | 50.00 | 50.00 | **70.00** |" in md
    assert "### cvh" in md and "never used" in md
    assert (tmp_path / "studies/tune.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- applying
def _choice_file(tmp_path: Path, variants: dict, dataset: str = "demo", method: str = "cmimh") -> Path:
    p = tmp_path / f"{method}.json"
    p.write_text(json.dumps({"format": S.TUNE_FORMAT, "dataset": dataset, "method": method,
                             "chosen": {"point": S.point_name(variants), "variants": variants, "score": 0.5}}))
    return p


def test_load_choice_rejects_missing_foreign_and_mismatched_files(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        T.load_choice(tmp_path / "absent.json", "cmimh")
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(PipelineError, match="is not a tune result"):
        T.load_choice(tmp_path / "x.json", "cmimh")
    f = _choice_file(tmp_path, {"mi": 2.0}, dataset="mirflickr25k")
    with pytest.raises(PipelineError, match="tuned on data set 'mirflickr25k', not 'demo'"):
        T.load_choice(f, "cmimh", "demo")
    with pytest.raises(PipelineError, match="tunes method 'cmimh', not 'cvh'"):
        T.load_choice(f, "cvh")


def test_cli_validation_runs_tune_and_a_tuned_run(tmp_path):
    """By hand, on a tiny features file: the grid points' -val runs (train, encode, evaluate),
    `cmimh tune`, then `cmimh train --tuned`: the choice first, the name's variants over it."""
    from conftest import make_features_h5
    from pipeline.cli import main
    from pipeline.methods.base import load_model

    feats = make_features_h5(tmp_path / "f.h5", n=60, splits=True)  # queries 0..9, database 10..59
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.update({"dataset": "t", "device": "cpu", "method_settings": {"cmimh": TINY_CMIMH},
                "tune": {"grid": {"cmimh": {"mi": [1, 2]}}, "val_queries": 10, "bits": 4},
                "datasets": {"t": {"source": "features", "path": str(feats)}}})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    c = ["--config", str(config), "--no-progress"]
    results = tmp_path / "results"
    for r in S.study_runs("tune", resolve(cfg, "t", "tune")):
        d = results / r.method / "4"
        assert main(["train", *c, "--features", str(feats), "--method", r.method, "--bits", "4",
                     "-o", str(d / "model.pt")]) == 0
        assert main(["encode", *c, "--features", str(feats), "--method", r.method, "--model", str(d / "model.pt"),
                     "-o", str(d / "codes.h5")]) == 0
        assert main(["evaluate", str(d / "codes.h5"), "-o", str(d / "metrics.json")]) == 0
        m = json.loads((d / "metrics.json").read_text())
        assert m["n_query"] == 10 and m["n_db"] == 40  # the validation protocol, not the real queries
    assert main(["tune", *c, "--results", str(results), "-o", str(results / "tune")]) == 0
    pick = json.loads((results / "tune/cmimh.json").read_text())["chosen"]["variants"]["mi"]
    model = tmp_path / "m.pt"
    assert main(["train", *c, "--features", str(feats), "--method", "cmimh-kl2-tuned", "--bits", "4",
                 "--tuned", str(results / "tune/cmimh.json"), "-o", str(model)]) == 0
    loaded, meta = load_model(model)
    assert loaded.config.weights.mi == pick and loaded.config.weights.kl == 2.0  # the name wins over the file
    assert meta["tuned"]["point"] == f"mi{pick:g}"
    assert main(["train", *c, "--features", str(feats), "--method", "cmimh-tuned", "--bits", "4",
                 "-o", str(model)]) == 2  # a -tuned method needs --tuned
    assert main(["train", *c, "--features", str(feats), "--method", "cmimh", "--bits", "4",
                 "--tuned", str(results / "tune/cmimh.json"), "-o", str(model)]) == 2


# ----------------------------------------------------------------------------- the config's grids
def _config_grid() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())["tune"]["grid"]


def test_every_methods_config_grid_parses_within_the_budget():
    """Every method of config.yaml's tune.grid: its keys are that method's variants, at most 18 points."""
    from pipeline.methods import REGISTRY

    grid = _config_grid()
    assert set(grid) == set(REGISTRY) - {"lsh"}                  # every method with settings is tunable
    for method, g in grid.items():
        pts = S.grid_points(method, g)
        assert 1 <= len(pts) <= 18, method
        for p in pts:                                          # each point a valid method name and setting
            parse_method(f"{method}-{S.point_name(p)}").config({})


def test_the_cmimh_grid_holds_the_papers_defaults_and_the_documented_departure():
    from pipeline.methods.cmimh import Config

    pts = [parse_method(f"cmimh-{S.point_name(p)}").config({}) for p in S.grid_points("cmimh", _config_grid()["cmimh"])]
    assert Config() in pts                                      # hidden 1024, kl 0.5, summed L_rec weight 1
    best = Config.from_dict({"hidden": 256, "rec_norm": "mean", "weights": {"kl": 5.0, "rec": 300.0}}, "x")
    assert best in pts


def test_linear_grids_hold_the_ridge_plateau():
    for method in ("cvh", "ccaitq", "acq"):
        assert {1, 3, 10} <= set(_config_grid()[method]["reg"]), method
    assert parse_method("ccaitq-reg3-power2").config({}).eig_power == 2.0


def test_recnorm_and_hidden_variants():
    c = parse_method("cmimh-hidden256-recnorm1-rec300").config({})
    assert (c.hidden, c.rec_norm, c.weights.rec) == (256, "mean", 300.0) and isinstance(c.hidden, int)
    assert parse_method("cmimh-recnorm0").config({"rec_norm": "mean"}).rec_norm == "sum"
    for bad, needle in (("cmimh-recnorm2", r"recnorm must be one of 0 \(sum\), 1 \(mean\)"),
                        ("cmimh-recnorm0.5", "recnorm must be one of"), ("cmimh-hidden2.5", "hidden must be an integer"),
                        ("cvh-recnorm1", "cvh has no variant 'recnorm'")):
        with pytest.raises(PipelineError, match=needle):
            parse_method(bad)


@pytest.mark.parametrize("method", sorted(yaml.safe_load((REPO / "config.yaml").read_text())["tune"]["grid"]))
def test_no_methods_tune_run_reads_the_queries(tmp_path, monkeypatch, method):
    """End to end, for every method of config.yaml's grid: a validation run's train and encode stages
    on a features file whose query split cannot be read (touching it fails) and whose query rows
    are NaN (a method fed them refuses them)."""
    from conftest import make_features_h5
    from pipeline.features import store
    from pipeline.stages import encode as E
    from pipeline.stages import train as TR

    feats = make_features_h5(tmp_path / "f.h5", n=80, splits=True)  # queries 0..9, database 10..79
    real = store.read_features

    class NoQuery:
        def __init__(self, f):
            self._f = f
            for a in (f.image, f.text):
                a[:10] = np.nan                     # the query rows

        def __getattr__(self, k):
            if k == "query":
                raise AssertionError("a tune run read the queries")
            return getattr(self._f, k)

    monkeypatch.setattr(store, "read_features", lambda p: NoQuery(real(p)))
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    small = {"cmimh": TINY_CMIMH, "djsrh": {"epochs": 1, "batch_size": 10, "txt_hidden": 8},
             "fsh": {"anchors": 10}, "pdh": {"knn_dim": 4, "knn": 3}}
    grid = {k: v[:1] for k, v in cfg["tune"]["grid"][method].items()}
    if method == "fsh":
        grid["anchors"] = [10]
    cfg.update({"dataset": "t", "device": "cpu", "method_settings": small,
                "tune": {"grid": {method: grid}, "val_queries": 10, "bits": 4},
                "datasets": {"t": {"source": "features", "path": str(feats)}}})
    (run,) = S.study_runs("tune", resolve(cfg, "t", "tune"))
    assert run.method.endswith("-val0")
    TR.run(resolve(cfg, "t", "train", run.method), feats, 4, tmp_path / "model.pt", progress=False)
    E.run(resolve(cfg, "t", "encode", run.method), tmp_path / "model.pt", feats, tmp_path / "codes.h5")
    from pipeline.eval.codes import read_codes

    codes = read_codes(tmp_path / "codes.h5")
    assert len(codes.query_labels) == 10 and len(codes.db_labels) == 60  # validation queries, the rest
