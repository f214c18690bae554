"""The config file (pipeline/config.py) and the one settings resolver (pipeline.stages.resolve):
structure checks, each data set's view, every stage's settings, method variants applied once."""

import types

import pytest

from pipeline.config import check_structure, dataset_view, load_config, normalize
from pipeline.errors import PipelineError
from pipeline.stages import check_config, resolve, settings_from_args

from conftest import REPO


@pytest.fixture()
def cfg():
    return load_config(REPO / "config.yaml")


def test_repo_config_is_valid_and_resolves(cfg):
    check_config(cfg)
    s = resolve(cfg, "demo", "extract")
    assert s["dataset"] == "demo" and s["seed"] == cfg["seed"]
    assert s["image_features"]["weights"] == "random"
    assert s["image_features"]["on_bad_image"] == "error"  # default filled in (ImageFeatures)
    t = resolve(cfg, "demo", "train", "cmimh")
    assert t["settings"]["weights"]["mi"] == 1.0 and t["settings"]["epochs"] == 60  # CMIMH's Config defaults
    assert set(resolve(cfg, "demo", "extract_image")["image_features"]) >= {"weights", "input_size"}
    assert "pca_dim" not in resolve(cfg, "demo", "extract_image")["image_features"]  # FC7 does not read it


def test_dataset_overrides_merge_into_method_settings(cfg):
    cfg["method_settings"]["cmimh"] = {"weights": {"mi": 2.0}}
    cfg["datasets"]["demo"]["method_settings"] = {"cmimh": {"epochs": 3, "weights": {"kl": 0.0}}}
    s = resolve(cfg, "demo", "train", "cmimh")["settings"]
    assert s["epochs"] == 3 and s["weights"]["kl"] == 0.0
    assert s["weights"]["mi"] == 2.0  # the global sibling stays
    view = dataset_view(cfg, "demo")
    assert view["source"] == "demo" and view["method_settings"]["cmimh"]["weights"] == {"mi": 2.0, "kl": 0.0}


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c.update(dataset="nope"), "unknown dataset 'nope'"),
    (lambda c: c.update(code_lengths=[0]), "code_lengths[0]"),
    (lambda c: c.update(code_lengths=[]), "code_lengths"),
    (lambda c: c.update(device="gpu"), "device"),
    (lambda c: c.update(methods=["magic"]), "methods[0]"),
    (lambda c: c["method_settings"].update(cmimh={"weights": {"mi": -1}}), "weights.mi must be a finite number >= 0"),
    (lambda c: c["method_settings"].update(cvh={"regg": 1}), "unknown key(s) regg"),
    (lambda c: c["method_settings"].update(nosuch={}), "method_settings: unknown method 'nosuch'"),
    (lambda c: c["datasets"]["demo"]["image_features"].update(input_size=8), "image_features: input_size"),
    (lambda c: c.update(typo_key=1), "typo_key"),
    (lambda c: c["datasets"].update(mine={"source": "features", "path": "/no/such.h5"}) or c.update(dataset="mine"),
     "features file not found: /no/such.h5"),
    (lambda c: c["datasets"]["demo"].update(n_query=2400), "n_query + n_train"),
])
def test_bad_config_one_line(cfg, mutate, needle):
    mutate(cfg)
    with pytest.raises(PipelineError) as e:
        check_config(cfg)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_normalize_undoes_snakemake_string_lists():
    c = {"code_lengths": ["16", "32"], "methods": ["cmimh"], "seed": 1}
    assert normalize(c)["code_lengths"] == [16, 32]
    assert c["methods"] == ["cmimh"]


def _args(**kw):
    return types.SimpleNamespace(**{"settings": None, "config": None, "dataset": None, **kw})


def test_settings_from_args_json_and_file(tmp_path, cfg):
    assert settings_from_args(_args(settings='{"dataset": "x", "seed": 1}'), "train") == {"dataset": "x", "seed": 1}
    with pytest.raises(PipelineError, match="not valid JSON"):
        settings_from_args(_args(settings="{bad"), "train")
    s2 = settings_from_args(_args(config=str(REPO / "config.yaml"), dataset="demo"), "train", "cvh-reg0.5")
    assert s2 == resolve(cfg, "demo", "train", "cvh-reg0.5") and s2["settings"] == {"reg": 0.5}
    with pytest.raises(PipelineError, match="config file not found"):
        settings_from_args(_args(config=str(tmp_path / "none.yaml")), "train")


def test_method_variants_are_applied_once_and_only_where_read(cfg):
    s = resolve(cfg, "demo", "train", "cmimh")["settings"]
    v = resolve(cfg, "demo", "train", "cmimh_no_mi")["settings"]
    assert v["weights"]["mi"] == 0.0
    assert {k: x for k, x in v["weights"].items() if k != "mi"} == {k: x for k, x in s["weights"].items() if k != "mi"}
    with pytest.raises(PipelineError, match="unknown method 'cmimh_no_foo'|no term 'foo'"):
        resolve(cfg, "demo", "train", "cmimh_no_foo")
    # only train reads a method's settings; encode reads the run protocol only
    assert "settings" not in resolve(cfg, "demo", "encode", "cmimh_no_kl")
    c = resolve(cfg, "demo", "train", "cmimh-mi2-kl0.1-lr0.0005-samples10-epochs3-ntrain700")
    w = c["settings"]
    assert (w["weights"]["mi"], w["weights"]["kl"], w["weights"]["rec"]) == (2.0, 0.1, 1.0)
    assert (w["lr"], w["lr_decoder"], w["critic_input"], w["critic_samples"], w["epochs"]) == \
        (0.0005, 0.0005, "samples", 10, 3)
    assert c["train_size"] == 700 and c["method"] == "cmimh-mi2-kl0.1-lr0.0005-samples10-epochs3-ntrain700"
    # a baseline's train settings are its own Config's, with its variants
    t = resolve(cfg, "demo", "train", "cvh-ntrain500")
    assert t["settings"] == {"reg": 1.0} and t["train_size"] == 500
    # a validation run carries its fold's protocol (tune settings), in train and encode alike
    v0 = resolve(cfg, "demo", "encode", "cmimh-mi1-val0")
    assert v0["validation"] == {"val_queries": 400, "folds": 1, "fold": 0, "train_size": None}
    with pytest.raises(PipelineError, match="validation fold 3 is not in 0..0"):
        resolve(cfg, "demo", "train", "cmimh-val3")
    bad = dict(cfg, methods=["cmimh", "cvh_no_mi"])
    with pytest.raises(PipelineError, match=r"config: methods\[1\]: .*cvh has no term 'mi'"):
        check_config(bad)


def test_every_stage_resolves(cfg):
    from pipeline.stages import STAGES

    for stage in STAGES:
        s = resolve(cfg, "demo", stage, {"train": "cmimh", "encode": "cmimh", "protocol": "udcmh"}.get(stage))
        assert isinstance(s, dict) and s
    with pytest.raises(PipelineError, match="unknown stage"):
        resolve(cfg, "demo", "bake")


def test_config_file_not_utf8_or_a_directory_is_one_line(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_bytes(b"dataset: d\xe9mo\n")
    with pytest.raises(PipelineError, match=r"config.yaml: not UTF-8 text \(byte 0xe9 at offset 10\)"):
        load_config(bad)
    with pytest.raises(PipelineError, match="is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize("key", ["data_dir", "results_dir"])
def test_a_data_or_results_folder_below_a_file_is_one_line(cfg, tmp_path, key):
    """Snakemake itself failed with a NotADirectoryError traceback while scanning the outputs."""
    (tmp_path / "afile").write_text("x")
    cfg[key] = str(tmp_path / "afile" / "sub")
    with pytest.raises(PipelineError, match=rf"^config: {key}: cannot write .*afile/sub: .*afile is a file, not a folder$"):
        check_structure(cfg)
    cfg[key] = str(tmp_path / "afile")
    with pytest.raises(PipelineError, match=rf"^config: {key}: cannot write the folder .*afile: it is an existing file$"):
        check_structure(cfg)
    check_structure(cfg, check_files=False)  # the check reads the disk: only where files are checked


# ----------------------------------------------------------------------------- protocol presets
def test_protocol_view_overrides_features_and_split_and_records_the_preset(cfg):
    v = dataset_view(cfg, "mirflickr25k@mgah")
    assert v["dataset"] == "mirflickr25k@mgah" and v["base_dataset"] == "mirflickr25k"
    assert v["image_features"]["model"] == "vgg19"
    assert v["image_features"]["weights"] == "imagenet" and v["image_features"]["pca_dim"] == 1024  # the data set's
    assert v["text_features"] == {"kind": "bow", "vocab_size": 1000, "min_count": 1, "stop_words": "none"}
    assert v["protocol"]["split"] == {"n_query": 0.05, "n_train": "database"}
    # NUS-WIDE: 1% queries (the preset's per-source override)
    assert dataset_view(cfg, "nuswide@mgah")["protocol"]["split"]["n_query"] == 0.01
    # the data set's own view is untouched
    assert dataset_view(cfg, "mirflickr25k")["image_features"]["model"] == "alexnet"
    assert "protocol" not in dataset_view(cfg, "mirflickr25k")


def test_handcrafted_protocol_reads_nuswides_low_level_features_only_on_nuswide(cfg):
    s = resolve(cfg, "nuswide@handcrafted", "extract_image")
    assert s["image_features"]["model"] == "nuswide_bow_sift" and "low_level" in s
    e = resolve(cfg, "nuswide@handcrafted", "extract")
    assert e["image_features"]["pca_dim"] == 500 and e["text_features"]["kind"] == "tags"
    assert e["protocol"]["split"] == {"n_query": 2000, "n_train": 20000}
    # elsewhere: the data set's own image features, 1,000-word bag of words for the texts
    d = resolve(cfg, "demo@handcrafted", "extract")
    assert d["image_features"]["model"] == "alexnet" and d["text_features"]["vocab_size"] == 1000
    cfg["datasets"]["demo"]["image_features"] = {"model": "nuswide_bow_sift"}
    with pytest.raises(PipelineError, match="only a nuswide data set has them"):
        resolve(cfg, "demo", "extract_image")


def test_protocol_settings_users_can_change_and_bad_ones_are_one_line(cfg):
    cfg["protocols"] = {"ldr": {"split": {"n_query": 500, "n_val": 100, "n_train": "database"}, "bits": [64]}}
    check_structure(normalize(cfg), check_files=False)
    assert dataset_view(cfg, "demo@ldr")["protocol"]["split"]["n_query"] == 500
    s = resolve(cfg, "demo", "protocol", "ldr")
    assert s["tree"] == "demo@ldr" and s["bits"] == [64] and s["methods"][0] == "cmimh" and "fsh" in s["methods"]
    assert resolve(cfg, "demo", "protocol", "udcmh")["tree"] == "demo"  # no features or split: the own runs
    with pytest.raises(PipelineError, match="changes neither features nor split"):
        dataset_view(cfg, "demo@udcmh")
    with pytest.raises(PipelineError, match="unknown protocol 'xyz'"):
        dataset_view(cfg, "demo@xyz")
    for bad, needle in (({"ldr": {"split": {"n_train": "all"}}}, "protocols.ldr.split.n_train"),
                        ({"mgah": {"bitz": [1]}}, "protocols.mgah"),
                        ({"nope": {}}, "protocols")):
        cfg["protocols"] = bad
        with pytest.raises(PipelineError, match=needle):
            check_structure(normalize(cfg), check_files=False)
    cfg["protocols"] = {"mgah": {"methods": ["cmimh", "nosuch"]}}
    with pytest.raises(PipelineError, match=r"protocols.mgah.methods\[1\]"):
        resolve(cfg, "demo", "protocol", "mgah")


def test_a_bad_protocol_method_stops_at_start(cfg):
    cfg["protocols"] = {"curves": {"methods": ["cvh", "cvh-nosuch1"]}}
    with pytest.raises(PipelineError, match=r"protocols.curves.methods\[1\]"):
        check_config(cfg, check_files=False)
