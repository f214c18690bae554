"""The Snakemake workflow: config errors at start, dry runs through each profile, and one
end-to-end run on a tiny demo (the whole pipeline, in about a minute)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def smk(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
                       capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def tiny_config(workdir: Path, **over) -> Path:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["code_lengths"] = [8, 16]
    cfg["datasets"]["demo"].update({
        "n_pairs": 120, "image_size": 32, "n_query": 20, "n_train": 80,
        "image_features": {"model": "alexnet", "weights": "random", "pca_dim": 16, "batch_size": 64,
                           "input_size": 64},
        "text_features": {"kind": "tags"},
        "cmimh": {"hidden": 64, "critic_hidden": 32, "disc_hidden": 32, "epochs": 2, "batch_size": 20},
    })
    cfg.update(over)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return workdir


def test_repo_config_dry_run_plans_every_stage(tmp_path):
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    p = smk(tmp_path, "-n", "--cores", "2", "all")
    for rule in ("prepare", "extract_image", "extract_text", "extract", "train", "encode", "evaluate", "report"):
        assert f"\n{rule} " in p.stdout, rule


def test_ablation_target_plans_one_run_per_variant(tmp_path):
    wd = tiny_config(tmp_path)
    p = smk(wd, "-n", "--cores", "2", "ablation")
    for variant in ("cmimh", "cmimh_no_rec", "cmimh_no_mi", "cmimh_no_kl", "cmimh_no_tc", "cmimh_no_bal"):
        assert f"results/demo/{variant}/32/model.pt" in p.stdout, variant
    assert "ablation_table" in p.stdout


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_dry_run_through_profile(tmp_path, profile):
    wd = tiny_config(tmp_path)
    p = smk(wd, "-n", "--profile", str(REPO / "workflow" / "profiles" / profile), "all")
    assert "train" in p.stdout and "This was a dry-run" in p.stdout


@pytest.mark.parametrize("override, needle", [
    ("dataset=nosuch", "unknown dataset 'nosuch'"),
    ("code_lengths=[0]", "code_lengths[0]: 0 is less than the minimum of 1"),
])
def test_bad_config_stops_at_start_with_one_line(tmp_path, override, needle):
    wd = tiny_config(tmp_path)
    p = smk(wd, "-n", "--cores", "1", "all", "--config", override, check=False)
    assert p.returncode != 0
    lines = [l for l in p.stderr.splitlines() if l.startswith("cmimh:")]
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_missing_features_file_stops_at_start(tmp_path):
    wd = tiny_config(tmp_path)
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["datasets"]["mine"] = {"source": "features", "path": str(tmp_path / "absent.h5")}
    cfg["dataset"] = "mine"
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    p = smk(wd, "-n", "--cores", "1", "all", check=False)
    assert p.returncode != 0
    assert f"features file not found: {tmp_path / 'absent.h5'}" in p.stderr


def test_end_to_end_tiny_demo(tmp_path):
    wd = tiny_config(tmp_path / "run")
    smk(wd, "--cores", "2", "all")
    for bits in (8, 16):
        m = json.loads((wd / f"results/demo/cmimh/{bits}/metrics.json").read_text())
        for task in ("i2t", "t2i", "i2i", "t2t"):
            assert 0.0 <= m["map@1000"][task] <= 1.0
        assert (wd / f"results/demo/cmimh/{bits}/index/index.h5").is_file()
        assert (wd / f"logs/demo/cmimh/{bits}/train.log").is_file()
    report = (wd / "results/demo/report.md").read_text()
    assert "| Img→Txt | cmimh |" in report and "8 bits" in report and "16 bits" in report
    assert list((wd / "results/demo/plots").glob("*.png"))
    # a second run has nothing to do
    p = smk(wd, "-n", "--cores", "2", "all")
    assert "Nothing to be done" in p.stdout + p.stderr
    # --forcerun train redoes training and what follows, nothing before it
    p = smk(wd, "-n", "--cores", "2", "all", "--forcerun", "train")
    planned = {line.split()[0] for line in p.stdout.splitlines()
               if line and line.split()[0] in {"prepare", "extract_image", "extract_text", "extract",
                                               "train", "encode", "evaluate", "report"} and len(line.split()) == 2}
    assert planned == {"train", "encode", "evaluate", "report"}, p.stdout
    # a by-hand search over the index works
    cmimh = str(Path(sys.executable).parent / "cmimh")
    q = subprocess.run([cmimh, "search", str(wd / "results/demo/cmimh/16/index"), "--image",
                        str(next((wd / "data/demo/images").glob("*.jpg"))), "-k", "3"],
                       capture_output=True, text=True, cwd=wd)
    assert q.returncode == 0, q.stderr
    hits = [json.loads(l) for l in q.stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
