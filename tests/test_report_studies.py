"""Study tables and plots (pipeline/report/studies.py) from hand-made metrics.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import dataset_view
from pipeline.errors import PipelineError
from pipeline.methods import parse_method
from pipeline.report import studies as S
from pipeline.stages.study import run as _run_study


def write_study(name, s, results, out_md, out_png=None, k=None):
    return _run_study(name, s, results, out_md, out_png, k)

TASKS = ("i2t", "t2i", "i2i", "t2t")


def _metrics(i2t, t2i=None, i2i=None, t2t=None, diag=None, k=1000) -> dict:
    """A metrics.json with mAP@k per task (defaults: i2t + 0.01, + 0.02, + 0.03)."""
    vals = [i2t, t2i, i2i, t2t]
    vals = [v if v is not None else round(i2t + 0.01 * i, 4) for i, v in enumerate(vals)]
    m = {f"map@{k}": dict(zip(TASKS, vals))}
    if diag is not None:
        m["diagnostics"] = diag
    return m


def _put(results: Path, method: str, bits: int, m: dict) -> None:
    p = results / method / str(bits) / "metrics.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(m))


def _settings(**over) -> dict:
    s = {**S.STUDY_DEFAULTS, "dataset": "demo", "methods": ["cmimh"], "ablation_variants": ["cmimh", "cmimh_no_mi"],
         "eval_k": 1000, "tuned_methods": ["cmimh"], "comparison_methods": ["cmimh"], "seeds": 2,
         "comparison_bits": [16]}
    s.update(over)
    if "code_lengths_methods" not in over:
        s["code_lengths_methods"] = s["methods"]
    return s


def test_code_lengths_runs_every_comparison_method_by_default():
    """Table III: PDH, ACQ and FSH join CMIMH and the baselines of `methods` unless the config says
    otherwise (null: the methods of `methods`); an unknown name is refused when settings resolve."""
    view = {"dataset": "demo", "methods": ["cmimh", "cvh"]}
    s = S.study_settings(view)
    assert s["code_lengths_methods"] == ["cmimh", "cvh", "cmfh", "ccaitq", "djsrh", "pdh", "acq", "fsh"]
    assert [r.method for r in S.study_runs("code_lengths", {**s, "code_lengths": [16]})] == s["code_lengths_methods"]
    assert S.study_settings({**view, "studies": {"code_lengths_methods": None}})["code_lengths_methods"] == \
        ["cmimh", "cvh"]
    with pytest.raises(PipelineError, match="nope"):
        S.study_settings({**view, "studies": {"code_lengths_methods": ["nope"]}})


# ----------------------------------------------------------------------------- settings, runs
def test_study_settings_merge_defaults_config_and_dataset():
    cfg = {"dataset": "demo", "methods": ["cmimh", "cvh"],
           "studies": {"bits": 16, "mi_weights": [1, 2], "report": ["mi_sweep"]},
           "datasets": {"demo": {"source": "demo", "studies": {"mi_weights": [3], "train_sizes": [500]}},
                        "other": {"source": "demo"}}}
    s = S.study_settings(dataset_view(cfg, "demo"))
    assert s["bits"] == 16 and s["mi_weights"] == [3] and s["train_sizes"] == [500]
    assert s["kl_weights"] == S.STUDY_DEFAULTS["kl_weights"] and s["report"] == ["mi_sweep"]
    assert s["methods"] == ["cmimh", "cvh"] and s["dataset"] == "demo"
    assert S.study_settings(dataset_view(cfg, "other"))["mi_weights"] == [1, 2]
    with pytest.raises(PipelineError, match="unknown study 'nope'"):
        S.study_settings(dataset_view({**cfg, "studies": {"report": ["nope"]}}, "demo"))


@pytest.mark.parametrize("value, text", [(0, "0"), (0.1, "0.1"), (1.0, "1"), (2, "2"), (0.0001, "0.0001"),
                                         (2.5, "2.5"), (1e-05, "0.00001")])
def test_fmt_number_is_a_valid_method_number(value, text):
    assert S.fmt_number(value) == text
    assert parse_method(f"cmimh-mi{text}").variants["mi"] == pytest.approx(value)


@pytest.mark.parametrize("method, epochs, expected", [
    ("cmimh", None, "cmimh"),
    ("cmimh", 5, "cmimh-epochs5"),
    ("cmimh_no_mi", 5, "cmimh_no_mi-epochs5"),
    ("cmimh-samples10", 3, "cmimh-samples10-epochs3"),
    ("cmimh-tuned", 5, "cmimh-epochs5-tuned"),
    ("cmimh-epochs9", 5, "cmimh-epochs9"),        # the name already sets epochs
    ("djsrh-ntrain500", 5, "djsrh-ntrain500"),    # baselines have no epochs variant
])
def test_with_epochs(method, epochs, expected):
    out = S.with_epochs(method, epochs)
    assert out == expected
    parse_method(out)  # still a valid method name


def _runs(name, s):
    return [(r.method, r.bits) for r in S.study_runs(name, s)]


def test_study_runs_name_every_run():
    s = _settings(methods=["cmimh", "cvh"], code_lengths=[16, 64], mi_weights=[0, 0.5], kl_weights=[2],
                  train_sizes=[500, 1000], train_size_bits=[16], train_size_methods=["cmimh", "djsrh"],
                  critic_samples=[1, 5], tc_bits=[16, 32], bits=32)
    assert _runs("code_lengths", s) == [("cmimh", 16), ("cmimh", 64), ("cvh", 16), ("cvh", 64)]
    assert _runs("mi_sweep", s) == [("cmimh-mi0", 32), ("cmimh-mi0.5", 32)]
    assert _runs("kl_sweep", s) == [("cmimh-kl2", 32)]
    assert _runs("train_size", s) == [("cmimh-ntrain500", 16), ("cmimh-ntrain1000", 16),
                                      ("djsrh-ntrain500", 16), ("djsrh-ntrain1000", 16)]
    assert _runs("critic_input", s) == [("cmimh", 32), ("cmimh-samples1", 32), ("cmimh-samples5", 32)]
    assert _runs("ablation", s) == [("cmimh", 32), ("cmimh_no_mi", 32)]
    assert _runs("tc_study", s) == [("cmimh", 16), ("cmimh_no_tc", 16), ("cmimh", 32), ("cmimh_no_tc", 32)]
    # with studies.epochs, CMIMH runs get their own folders; baselines are unchanged
    e = {**s, "epochs": 4}
    assert _runs("mi_sweep", e) == [("cmimh-mi0-epochs4", 32), ("cmimh-mi0.5-epochs4", 32)]
    assert _runs("code_lengths", e)[-1] == ("cvh", 64)
    assert _runs("train_size", e)[0] == ("cmimh-ntrain500-epochs4", 16)
    with pytest.raises(PipelineError, match="unknown study 'nope'"):
        S.study_runs("nope", s)
    with pytest.raises(PipelineError, match="not a base method"):
        S.study_runs("train_size", {**s, "train_size_methods": ["cmimh_no_mi"]})


def test_study_metrics_files_dedupe_in_order(tmp_path):
    s = _settings(tc_bits=[32], ablation_variants=["cmimh", "cmimh_no_tc"])
    files = S.study_metrics_files(tmp_path, "tc_study", s)
    assert files == [str(tmp_path / "cmimh/32/metrics.json"), str(tmp_path / "cmimh_no_tc/32/metrics.json")]


# ----------------------------------------------------------------------------- tables
def test_code_lengths_table_iii_layout(tmp_path):
    s = _settings(methods=["cmimh", "cvh"], code_lengths=[16, 32])
    for m, b, v in (("cmimh", 16, 0.5), ("cmimh", 32, 0.6), ("cvh", 16, 0.3), ("cvh", 32, 0.35)):
        _put(tmp_path, m, b, _metrics(v))
    text = write_study("code_lengths", s, tmp_path, tmp_path / "cl.md", tmp_path / "cl.png")
    assert "| Task | Method | 16 bits | 32 bits |" in text
    assert "| Img→Txt | cmimh | 50.00 | 60.00 |" in text
    assert "| Img→Txt | cvh | 30.00 | 35.00 |" in text
    assert "| Txt→Txt | cvh | 33.00 | 38.00 |" in text
    assert (tmp_path / "cl.md").read_text() == text
    assert (tmp_path / "cl.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("study, term", [("mi_sweep", "mi"), ("kl_sweep", "kl")])
def test_weight_sweep_table(tmp_path, study, term):
    s = _settings(**{f"{term}_weights": [0, 0.1, 1]}, bits=32)
    for w, v in (("0", 0.10), ("0.1", 0.20), ("1", 0.30)):
        _put(tmp_path, f"cmimh-{term}{w}", 32, _metrics(v, 0.9, 0.8, 0.7))
    text = write_study(study, s, tmp_path, tmp_path / "t.md", tmp_path / "t.png")
    lines = text.splitlines()
    assert f"| Task | {term} = 0 | {term} = 0.1 | {term} = 1 |" in lines
    assert "| Img→Txt | 10.00 | 20.00 | 30.00 |" in lines
    assert "| Txt→Img | 90.00 | 90.00 | 90.00 |" in lines
    assert "| Txt→Txt | 70.00 | 70.00 | 70.00 |" in lines
    assert S.STUDIES[study].reference in lines[0] and "demo, 32 bits, mAP@1000 in %" in lines[0]
    assert "set to the value shown" in text  # says what was varied


def test_train_size_table_ix_layout(tmp_path):
    s = _settings(train_sizes=[500, 1000], train_size_bits=[16, 32], train_size_methods=["djsrh", "cmimh"])
    val = {("djsrh", 500): 0.40, ("djsrh", 1000): 0.45, ("cmimh", 500): 0.50, ("cmimh", 1000): 0.55}
    for b in (16, 32):
        for (m, n), v in val.items():
            _put(tmp_path, f"{m}-ntrain{n}", b, _metrics(v + (0.1 if b == 32 else 0)))
    text = write_study("train_size", s, tmp_path, tmp_path / "t.md", tmp_path / "t.png")
    assert "| L | Task | Method | 500 | 1k |" in text
    assert "| 16 | Img→Txt | djsrh | 40.00 | 45.00 |" in text
    assert "| 16 | Img→Txt | cmimh | 50.00 | 55.00 |" in text
    assert "| 32 | Txt→Img | cmimh | 61.00 | 66.00 |" in text
    assert "drawn at random from the database" in text


def test_critic_input_table_i_layout(tmp_path):
    s = _settings(critic_samples=[1, 5], bits=32)
    for m, v in (("cmimh", 0.8193), ("cmimh-samples1", 0.8024), ("cmimh-samples5", 0.8127)):
        _put(tmp_path, m, 32, _metrics(v))
    text = write_study("critic_input", s, tmp_path, tmp_path / "t.md", tmp_path / "t.png")
    assert "| Task | Bernoulli p | K = 1 | K = 5 |" in text
    assert "| Img→Txt | 81.93 | 80.24 | 81.27 |" in text  # the paper's Table I, I→T


def test_ablation_table_iv_in_the_studies_layout(tmp_path):
    s = _settings(ablation_variants=["cmimh", "cmimh_no_mi"], ablation_bits=32)
    _put(tmp_path, "cmimh", 32, _metrics(0.7, diag={"corr_mse_image": 0.01, "corr_mse_text": 0.02}))
    _put(tmp_path, "cmimh_no_mi", 32, _metrics(0.4))
    text = write_study("ablation", s, tmp_path, tmp_path / "ablation.md", tmp_path / "ablation.png")
    assert "| CMIMH (all terms) | 70.00 | 71.00 | 72.00 | 73.00 | 0.0100 / 0.0200 |" in text
    assert "| without JS-MI (mi = 0) | 40.00 | 41.00 | 42.00 | 43.00 | – |" in text
    assert "Table IV" in text.splitlines()[0]


def test_tc_study_table_ii_layout(tmp_path):
    s = _settings(tc_bits=[16, 32])
    diag_with = {"tc_image": 2.327, "tc_text": 2.174, "corr_mse_image": 0.037, "corr_mse_text": 0.045}
    diag_without = {"tc_image": None, "tc_text": None, "corr_mse_image": 0.068, "corr_mse_text": 0.079}
    _put(tmp_path, "cmimh", 16, _metrics(0.8068, 0.7977, diag=diag_with))
    _put(tmp_path, "cmimh_no_tc", 16, _metrics(0.8039, 0.7976, diag=diag_without))
    _put(tmp_path, "cmimh", 32, _metrics(0.8193, 0.8143, diag=diag_with))
    _put(tmp_path, "cmimh_no_tc", 32, _metrics(0.8138, 0.8114, diag=diag_without))
    text = write_study("tc_study", s, tmp_path, tmp_path / "t.md", tmp_path / "t.png")
    lines = text.splitlines()
    assert "| Quantity | | 16 ✓ | 16 ✗ | 32 ✓ | 32 ✗ |" in lines
    assert "| TC | Img | 2.327 | – | 2.327 | – |" in lines
    assert "| Corr MSE | Txt | 0.0450 | 0.0790 | 0.0450 | 0.0790 |" in lines
    assert "| mAP@1000 | Img→Txt | 80.68 | 80.39 | 81.93 | 81.38 |" in lines  # the paper's Table II
    assert "| mAP@1000 | Txt→Img | 79.77 | 79.76 | 81.43 | 81.14 |" in lines
    assert "not estimated" in text


def test_epochs_override_is_stated_and_uses_its_own_runs(tmp_path):
    s = _settings(mi_weights=[1], epochs=3)
    _put(tmp_path, "cmimh-mi1-epochs3", 32, _metrics(0.5))
    text = write_study("mi_sweep", s, tmp_path, tmp_path / "t.md")
    assert "train for 3 epochs (studies.epochs)" in text and "`cmimh-mi1-epochs3`" in text
    assert not (tmp_path / "t.png").exists()


def test_missing_or_incomplete_metrics_are_one_line_errors(tmp_path):
    s = _settings(mi_weights=[0, 1])
    _put(tmp_path, "cmimh-mi0", 32, _metrics(0.5))
    with pytest.raises(PipelineError, match=r"missing metrics file: .*cmimh-mi1/32/metrics.json"):
        write_study("mi_sweep", s, tmp_path, tmp_path / "t.md", tmp_path / "t.png")
    assert not (tmp_path / "t.md").exists() and not (tmp_path / "t.png").exists()
    _put(tmp_path, "cmimh-mi1", 32, _metrics(0.5, k=50))
    with pytest.raises(PipelineError, match=r"no map@1000 \(evaluated with another --k\? its mAP keys: map@50\)"):
        write_study("mi_sweep", s, tmp_path, tmp_path / "t.md")


def test_every_study_plots(tmp_path):
    """Each study's plot renders from complete metrics (a PNG, written atomically)."""
    s = _settings(methods=["cmimh"], code_lengths=[16, 32], mi_weights=[0, 1], kl_weights=[0, 1],
                  train_sizes=[10, 20], train_size_bits=[16], train_size_methods=["cmimh"], critic_samples=[1],
                  tc_bits=[16])
    diag = {"tc_image": 1.0, "tc_text": None, "corr_mse_image": 0.1, "corr_mse_text": 0.2}
    for name in S.PAPER_STUDIES:
        for r in S.study_runs(name, s):
            _put(tmp_path, r.method, r.bits, _metrics(0.5, diag=diag))
        write_study(name, s, tmp_path, tmp_path / f"studies/{name}.md", tmp_path / f"studies/{name}.png")
        assert (tmp_path / f"studies/{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "studies").glob(".*"))  # no temporary files left


def test_report_includes_a_study_section(tmp_path):
    from pipeline.stages.report import run as write_report

    s = _settings(mi_weights=[1])
    _put(tmp_path, "cmimh-mi1", 32, _metrics(0.5))
    _put(tmp_path, "cmimh", 16, {**_metrics(0.5), "curves": {}})
    write_study("mi_sweep", s, tmp_path, tmp_path / "studies/mi_sweep.md")
    write_report(tmp_path, "demo", [16], ["cmimh"], tmp_path / "report.md", include=[tmp_path / "studies/mi_sweep.md"])
    assert "## JS-MI weight sweep (demo, 32 bits" in (tmp_path / "report.md").read_text()


def test_cli_study(tmp_path, capsys):
    from pipeline.cli import build_parser, main

    _put(tmp_path, "cmimh-kl2", 32, _metrics(0.25))
    s = _settings(kl_weights=[2])
    rc = main(["study", "kl_sweep", "--settings", json.dumps(s), "--results", str(tmp_path),
               "--plot", str(tmp_path / "kl.png"), "-o", str(tmp_path / "kl.md")])
    assert rc == 0
    assert "| Img→Txt | 25.00 |" in (tmp_path / "kl.md").read_text()
    rc = main(["study", "kl_sweep", "--settings", json.dumps({**s, "kl_weights": [3]}), "--results", str(tmp_path),
               "-o", str(tmp_path / "kl.md")])
    assert rc == 2 and "cmimh: error: missing metrics file" in capsys.readouterr().err
    # the subcommand offers exactly the studies the module knows
    sub = next(a for a in build_parser()._subparsers._group_actions[0].choices["study"]._actions
               if a.dest == "name")
    assert tuple(sub.choices) == S.PAPER_STUDIES


def test_comparison_cells_are_mean_and_std_over_the_seed_runs(tmp_path):
    """Each cell: the mean and the sample std over the -seed<k> repetitions, tuned and default apart,
    with the tuned CCA space's continuous (cosine) reference and the chosen settings printed."""
    s = _settings(comparison_methods=["cmimh", "ccaitq", "lsh"], tuned_methods=["cmimh", "ccaitq"], seeds=3,
                  comparison_bits=[32])
    vals = {"cmimh": [0.50, 0.54, 0.46], "ccaitq": [0.40, 0.40, 0.40], "lsh": [0.10, 0.20, 0.30]}
    for m, vs in vals.items():
        for k, v in enumerate(vs):
            seed = f"-seed{k}" if k else ""
            _put(tmp_path, f"{m}{seed}", 32, _metrics(v))
            if m != "lsh":
                tuned = {**_metrics(v + 0.1)}
                if m == "ccaitq":
                    tuned["continuous"] = _metrics(0.6 + 0.01 * k)
                _put(tmp_path, f"{m}{seed}-tuned", 32, tuned)
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "ccaitq.json").write_text(json.dumps({"chosen": {"variants": {"reg": 1.0}}}))
    runs = S.study_runs("comparison", s)
    assert {r.method for r in runs} == {"cmimh", "cmimh-seed1", "cmimh-seed2", "cmimh-tuned", "cmimh-seed1-tuned",
                                        "cmimh-seed2-tuned", "ccaitq", "ccaitq-seed1", "ccaitq-seed2", "ccaitq-tuned",
                                        "ccaitq-seed1-tuned", "ccaitq-seed2-tuned", "lsh", "lsh-seed1", "lsh-seed2"}
    text = write_study("comparison", s, tmp_path, tmp_path / "c.md", tmp_path / "c.png")
    tuned, default = text.split("At their defaults:")
    # cmimh at defaults: 0.50, 0.54, 0.46 -> mean 50.00, sample std 4.00
    assert "| Img→Txt | cmimh | 50.00 ± 4.00 |" in default and "| Img→Txt | lsh | 20.00 ± 10.00 |" in default
    assert "| Img→Txt | cmimh | 60.00 ± 4.00 |" in tuned and "| Img→Txt | ccaitq | 50.00 ± 0.00 |" in tuned
    assert "| Img→Txt | ccaitq, continuous (cosine, no hashing) | 61.00 ± 1.00 |" in tuned
    assert "lsh" not in tuned.split("Tuned")[1].split("\n\n")[1]  # no tune grid: no tuned row
    assert "ccaitq: reg = 1" in text and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert S.mean_std([0.5, 0.54, 0.46]) == pytest.approx((0.5, 0.04))


# ----------------------------------------------------------------------------- without labels
def _paired(i2t, t2i=None) -> dict:
    """A metrics.json of a collection without labels: the paired mAP only."""
    return {"labelled": False, "pair_map": {"i2t": i2t, "t2i": i2t + 0.01 if t2i is None else t2i}}


@pytest.mark.parametrize("study", ["mi_sweep", "ablation", "tc_study", "code_lengths", "critic_input"])
def test_studies_of_a_collection_without_labels_use_the_paired_map(tmp_path, study):
    s = _settings(mi_weights=[0, 1], code_lengths=[16, 32], critic_samples=[5], tc_bits=[16])
    for r in S.study_runs(study, s):
        _put(tmp_path, r.method, r.bits, _paired(0.1 + 0.01 * r.bits / 16))
    text = write_study(study, s, tmp_path, tmp_path / "t.md", tmp_path / "t.png")
    assert "paired mAP (mean reciprocal rank of the own pair) in %" in text
    assert "Img→Txt" in text and "Txt→Img" in text and "Img→Img" not in text and "Txt→Txt" not in text
    assert (tmp_path / "t.png").is_file()


def test_tune_selects_on_the_paired_map_without_labels(tmp_path):
    from pipeline.stages import tune

    t = {"grid": {"cmimh": {"mi": [1, 2]}}, "val_queries": 20, "folds": 1, "bits": 8, "epochs": None,
         "train_size": None, "eval_k": 1000, "seed": 0, "dataset": "demo"}
    for r in S.STUDIES["tune"].runs(t):
        _put(tmp_path, r.method, r.bits, _paired(0.3 if "mi2" in r.method else 0.2))
    sel = tune.run(t, tmp_path, tmp_path / "tune", tmp_path / "tune.md")
    assert sel["cmimh"]["chosen"]["point"] == "mi2"
    rec = json.loads((tmp_path / "tune" / "cmimh.json").read_text())
    assert "paired mAP" in rec["criterion"] and "Img→Img" not in (tmp_path / "tune.md").read_text()
