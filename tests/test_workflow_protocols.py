"""The protocol targets (workflow/rules/protocols.smk): each plans (`snakemake -n`) on MIRFlickr-25K,
NUS-WIDE and a collection of your own, in its own results tree, and one runs end to end on a tiny demo."""

from __future__ import annotations

import yaml

from conftest import REPO, write_collection
from test_workflow import smk, tiny_config

TARGETS = ("udcmh_protocol", "mgah_protocol", "ldr_protocol", "handcrafted_protocol", "curves")


def plan(tmp_path, dataset: str) -> str:
    p = smk(tmp_path, "-n", "--cores", "8", *TARGETS, "--config", f"dataset={dataset}")
    assert "This was a dry-run" in p.stdout
    return p.stdout


def check_plan(out: str, dataset: str) -> None:
    for t in TARGETS:
        assert f"\nrule {t}_table:" in out and f"results/{dataset}/studies/{t}.md" in out, t
    # every method we have, in each protocol's own tree; udcmh and curves use the data set's own runs
    for tree in (f"{dataset}@mgah", f"{dataset}@ldr", f"{dataset}@handcrafted", dataset):
        for m in ("cmimh", "cvh", "cmfh", "ccaitq", "djsrh", "lsh", "pdh", "acq", "fsh"):
            assert f"results/{tree}/{m}/64/metrics.json" in out, (tree, m)
    assert f"results/{dataset}@ldr/cmimh/128/metrics.json" in out  # Table VII: up to 128 bits
    assert f"results/{dataset}@mgah/intermediate/image.h5" in out  # VGG-19 features of its own
    # ldr's VGG-19 features are mgah's (the same settings: extracted once), its texts the data set's
    assert f"results/{dataset}@ldr/intermediate/image.h5" not in out
    assert f"results/{dataset}@ldr/intermediate/text.h5" not in out
    assert f"results/{dataset}/intermediate/text.h5" in out
    assert f"results/{dataset}@udcmh" not in out and f"results/{dataset}@curves" not in out
    # one prepared manifest (one download) shared by every tree
    assert out.count("\nrule prepare:") == 1


def test_protocol_targets_plan_on_mirflickr25k(tmp_path):
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    check_plan(plan(tmp_path, "mirflickr25k"), "mirflickr25k")


def test_protocol_targets_plan_on_nuswide_with_its_low_level_features(tmp_path):
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    out = plan(tmp_path, "nuswide")
    check_plan(out, "nuswide")
    # the handcrafted tree reads BoW_int.dat in one job (no image shards), the others extract in 4
    assert "results/nuswide@handcrafted/intermediate/image/shard_0_of_1.h5" in out
    assert "results/nuswide@mgah/intermediate/image/shard_3_of_4.h5" in out


def test_protocol_targets_plan_on_a_collection_of_your_own(tmp_path):
    write_collection(tmp_path / "data" / "mine-images", n=12)
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    check_plan(plan(tmp_path, "mine"), "mine")


def test_mgah_protocol_runs_end_to_end_on_a_tiny_demo(tmp_path):
    wd = tiny_config(tmp_path)
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["protocols"] = {"mgah": {"methods": ["cvh", "lsh"], "bits": [8]}}
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    smk(wd, "--cores", "2", "mgah_protocol")
    text = (wd / "results/demo/studies/mgah_protocol.md").read_text()
    assert "the paper's Table VI" in text and "| Img→Txt | cvh |" in text and "| Txt→Img | lsh |" in text
    assert "| Img→Txt | MGAH | 68.50 |" in text  # the paper's table, reported
    assert "6 queries" in text  # 5% of the tiny demo's 120 pairs
    assert (wd / "results/demo/studies/mgah_protocol.png").stat().st_size > 1000
    import h5py
    import json

    with h5py.File(wd / "results/demo@mgah/features.h5", "r") as f:
        prov = json.loads(f.attrs["provenance"])
        assert prov["protocol"]["name"] == "mgah" and prov["counts"] == {"query": 6, "database": 114, "train": 114}
        assert json.loads(prov["image"]["image_settings"])["model"] == "vgg19"
    assert not (wd / "results/demo/features.h5").exists()  # the demo's own runs are not touched
