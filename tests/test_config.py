
import pytest

from pipeline.config import load_config, normalize, resolve, settings_from_args, validate
from pipeline.errors import PipelineError

from conftest import REPO


@pytest.fixture()
def cfg():
    return load_config(REPO / "config.yaml")


def test_repo_config_is_valid_and_resolves(cfg):
    validate(cfg)
    s = resolve(cfg)
    assert s["dataset"] == "demo" and s["seed"] == cfg["seed"]
    assert s["image_features"]["weights"] == "random"
    assert s["image_features"]["on_bad_image"] == "error"  # default filled in
    assert s["cmimh"]["weights"]["mi"] == cfg["cmimh"]["weights"]["mi"]


def test_dataset_overrides_merge_into_cmimh_defaults(cfg):
    cfg["datasets"]["demo"]["cmimh"] = {"epochs": 3, "weights": {"kl": 0.0}}
    s = resolve(cfg)
    assert s["cmimh"]["epochs"] == 3
    assert s["cmimh"]["weights"]["kl"] == 0.0
    assert s["cmimh"]["weights"]["mi"] == cfg["cmimh"]["weights"]["mi"]  # untouched sibling
    assert "cmimh" not in {k for k in cfg["datasets"]["demo"] if k != "cmimh"}


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c.update(dataset="nope"), "unknown dataset 'nope'"),
    (lambda c: c.update(code_lengths=[0]), "code_lengths[0]"),
    (lambda c: c.update(code_lengths=[]), "code_lengths"),
    (lambda c: c.update(device="gpu"), "device"),
    (lambda c: c.update(methods=["magic"]), "methods[0]"),
    (lambda c: c["cmimh"]["weights"].update(mi=-1), "cmimh.weights.mi"),
    (lambda c: c.update(typo_key=1), "typo_key"),
    (lambda c: c["datasets"].update(mine={"source": "features", "path": "/no/such.h5"}) or c.update(dataset="mine"),
     "features file not found: /no/such.h5"),
    (lambda c: c["datasets"]["demo"].update(n_query=2400), "n_query + n_train"),
])
def test_bad_config_one_line(cfg, mutate, needle):
    mutate(cfg)
    with pytest.raises(PipelineError) as e:
        validate(cfg)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_normalize_undoes_snakemake_string_lists():
    c = {"code_lengths": ["16", "32"], "methods": ["cmimh"], "seed": 1}
    assert normalize(c)["code_lengths"] == [16, 32]
    assert c["methods"] == ["cmimh"]


def test_settings_from_args_json_and_file(tmp_path, cfg):
    s = settings_from_args('{"dataset": "x", "seed": 1}', None, None)
    assert s == {"dataset": "x", "seed": 1}
    with pytest.raises(PipelineError, match="not valid JSON"):
        settings_from_args("{bad", None, None)
    s2 = settings_from_args(None, str(REPO / "config.yaml"), "demo")
    assert s2 == resolve(cfg, "demo")
    with pytest.raises(PipelineError, match="config file not found"):
        settings_from_args(None, str(tmp_path / "none.yaml"), None)


def test_method_variants_switch_one_term_off(cfg):
    from pipeline.config import method_settings, resolve_stage

    s = resolve(cfg)
    assert method_settings(s, "cmimh") == s
    v = method_settings(s, "cmimh_no_mi")
    assert v["cmimh"]["weights"]["mi"] == 0.0
    assert {k: x for k, x in v["cmimh"]["weights"].items() if k != "mi"} == \
        {k: x for k, x in s["cmimh"]["weights"].items() if k != "mi"}
    assert s["cmimh"]["weights"]["mi"] > 0  # the input is not modified
    with pytest.raises(PipelineError, match="unknown method 'cmimh_no_foo'"):
        method_settings(s, "cmimh_no_foo")
    # stage settings: only train reads the variant
    assert resolve_stage(cfg, "demo", "train", "cmimh_no_kl")["cmimh"]["weights"]["kl"] == 0.0
    assert "cmimh" not in resolve_stage(cfg, "demo", "encode", "cmimh_no_kl")


@pytest.mark.parametrize("name, expect", [
    ("cmimh", {"base": "cmimh", "off": None, "variants": {}, "tuned": False}),
    ("cmimh_no_tc", {"base": "cmimh", "off": "tc", "variants": {}, "tuned": False}),
    ("cmimh-mi2-kl0.25", {"base": "cmimh", "off": None, "variants": {"mi": 2.0, "kl": 0.25}, "tuned": False}),
    ("cmimh-samples5", {"base": "cmimh", "off": None, "variants": {"samples": 5}, "tuned": False}),
    ("cvh-ntrain1000", {"base": "cvh", "off": None, "variants": {"ntrain": 1000}, "tuned": False}),
    ("cmimh-tuned", {"base": "cmimh", "off": None, "variants": {}, "tuned": True}),
    ("djsrh", {"base": "djsrh", "off": None, "variants": {}, "tuned": False}),
])
def test_parse_method(name, expect):
    from pipeline.config import parse_method

    assert parse_method(name) == expect


@pytest.mark.parametrize("name, msg", [
    ("cmimhx", "unknown method"), ("cmimh-mi", "unknown method"), ("cvh_no_mi", "only cmimh"),
    ("cvh-kl2", "only cmimh"), ("cmimh-mi1-mi2", "given twice"), ("cmimh-samples2.5", "positive integer"),
    ("cmimh-ntrain0", "positive integer"), ("cmimh-lr0", "lr must be > 0"), ("cmimh-tuned-mi2", "unknown method"),
])
def test_parse_method_rejects(name, msg):
    from pipeline.config import parse_method

    with pytest.raises(PipelineError, match=msg):
        parse_method(name)


def test_method_settings_variants(cfg):
    from pipeline.config import method_settings, resolve_stage

    s = resolve(cfg)
    v = method_settings(s, "cmimh-mi2-kl0.1-lr0.0005-samples10-epochs3-ntrain700")
    c = v["cmimh"]
    assert (c["weights"]["mi"], c["weights"]["kl"]) == (2.0, 0.1)
    assert c["weights"]["rec"] == s["cmimh"]["weights"]["rec"]
    assert (c["lr"], c["lr_decoder"], c["critic_input"], c["critic_samples"], c["epochs"]) == \
        (0.0005, 0.0005, "samples", 10, 3)
    assert v["train_size"] == 700 and "train_size" not in s
    # a baseline's train settings: its own block, no CMIMH settings
    t = resolve_stage(cfg, "demo", "train", "cvh-ntrain500")
    assert t["baseline"]["name"] == "cvh" and t["train_size"] == 500 and "cmimh" not in t
    # a config naming a bad method fails validation in one line
    bad = dict(cfg, methods=["cmimh", "cvh_no_mi"])
    with pytest.raises(PipelineError, match=r"config: methods\[1\]: .*only cmimh"):
        validate(bad)


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
        validate(cfg)
    cfg[key] = str(tmp_path / "afile")
    with pytest.raises(PipelineError, match=rf"^config: {key}: cannot write the folder .*afile: it is an existing file$"):
        validate(cfg)
    validate(cfg, check_files=False)  # the check reads the disk: only where files are checked
