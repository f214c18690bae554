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
        "method_settings": {"cmimh": {"hidden": 64, "critic_hidden": 32, "disc_hidden": 32, "epochs": 2,
                                      "batch_size": 20}},
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


def test_dry_run_orders_long_jobs_first_and_plans_one_chance_per_length(tmp_path):
    """Priorities: extraction ahead of everything, then CMIMH's trainings, DJSRH's, the linear
    methods' (Hasher.train_seconds + bits/16); one chance job per code length, read by each evaluate."""
    import re

    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    p = smk(tmp_path, "-n", "--cores", "2", "all")
    jobs = re.findall(r"\nrule (\w+):\n(.*?)(?=\n\n|\nrule |\Z)", p.stdout, re.S)
    prio = {}
    for rule, body in jobs:
        w = re.search(r"wildcards: (.*)", body)
        m = re.search(r"priority: (\d+)", body)
        prio[(rule, w.group(1) if w else "")] = int(m.group(1)) if m else 0
    train = {w: v for (r, w), v in prio.items() if r == "train"}
    assert train["dataset=demo, method=cmimh, bits=64"] == 160 + 4
    assert min(v for w, v in train.items() if "cmimh" in w) > max(v for w, v in train.items() if "djsrh" in w)
    assert min(v for w, v in train.items() if "djsrh" in w) > max(v for w, v in train.items() if "cvh" in w)
    assert prio[("extract_image_shard", "dataset=demo, shard=0, nshards=1")] == 1000
    assert prio[("extract_text", "dataset=demo")] == 1000
    assert re.search(r"\nchance\s+3\n", p.stdout) and re.search(r"\nevaluate\s+15\n", p.stdout)
    ev = next(body for rule, body in jobs if rule == "evaluate" and "method=cvh, bits=32" in body)
    assert "results/demo/chance/test/32.json" in ev.split("output:")[0]  # an input of every method's evaluate


def test_ablation_target_plans_one_run_per_variant(tmp_path):
    wd = tiny_config(tmp_path)  # studies.bits: 32
    p = smk(wd, "-n", "--cores", "2", "ablation")
    for variant in ("cmimh", "cmimh_no_rec", "cmimh_no_mi", "cmimh_no_kl", "cmimh_no_tc", "cmimh_no_bal"):
        assert f"results/demo/{variant}/32/model.pt" in p.stdout, variant
    assert "ablation_table" in p.stdout


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_dry_run_through_profile(tmp_path, profile):
    wd = tiny_config(tmp_path)
    p = smk(wd, "-n", "--profile", str(REPO / "workflow" / "profiles" / profile), "all")
    assert "train" in p.stdout and "This was a dry-run" in p.stdout


def test_only_torch_jobs_ask_for_a_gpu_and_slurm_sends_the_rest_to_a_cpu_partition(tmp_path):
    """CVH, CMFH and CCA-ITQ train on NumPy: their jobs declare gpu=0, and the SLURM profile's
    partition file (the executor plugin's dynamic selection) puts them on the CPU partition."""
    import re
    import types

    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    wd = tiny_config(tmp_path, methods=["cmimh", "cvh", "cmfh", "ccaitq", "djsrh"])
    p = smk(wd, "-n", "--profile", str(REPO / "workflow" / "profiles" / "slurm"), "all")
    gpus = {}
    for block in p.stdout.split("\nrule train:")[1:]:
        method = re.search(r"wildcards: dataset=demo, method=([^,\s]+)", block).group(1)
        gpus[method] = int(re.search(r"resources: .*gpu=(\d+)", block).group(1))
    assert gpus == {"cmimh": 1, "djsrh": 1, "cvh": 0, "cmfh": 0, "ccaitq": 0}, gpus
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert "set-resources" not in profile  # no rule is sent to a partition by name
    parts = read_partition_file(REPO / "workflow/profiles/slurm" / profile["slurm-partition-config"])

    class Job(types.SimpleNamespace):
        name = "train"

    def job(gpu):
        return Job(resources={"gpu": gpu, "mem_mb": 8000, "runtime": 240, "_cores": 1}, threads=1)

    log = types.SimpleNamespace(info=lambda *a: None, debug=lambda *a: None, warning=lambda *a: None)
    assert get_best_partition(parts, job(0), log) == "cpu"
    assert get_best_partition(parts, job(1), log) == "gpu"


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
    page = (wd / "results/demo/report.html").read_text()
    assert "<table>" in page and "<td>Img→Txt</td>" in page and "data:image/png;base64," in page
    # Snakemake's own HTML report carries the result tables (the page above) and no mailto link
    smk(wd, "--report", str(wd / "snakemake-report.html"))
    rep = (wd / "snakemake-report.html").read_text()
    assert '"results/demo/report.html": {"name": "report.html"' in rep
    assert "mailto:mAP" not in rep and "mAP&#64;1000" in rep
    # a second run has nothing to do
    p = smk(wd, "-n", "--cores", "2", "all")
    assert "Nothing to be done" in p.stdout + p.stderr
    # --forcerun train redoes training and what follows, nothing before it
    p = smk(wd, "-n", "--cores", "2", "all", "--forcerun", "train")
    planned = {line.split()[0] for line in p.stdout.splitlines()
               if line and line.split()[0] in {"prepare", "extract_image", "extract_text", "extract",
                                               "train", "encode", "evaluate", "report"} and len(line.split()) == 2}
    assert planned == {"train", "encode", "evaluate", "report"}, p.stdout
    # a stage run by hand with --config gives the same artifact as its rule, byte for byte
    cmimh = str(Path(sys.executable).parent / "cmimh")
    for method in ("cmimh", "cvh"):
        out = tmp_path / f"{method}.pt"
        q = subprocess.run([cmimh, "train", "--config", "config.yaml", "--threads", "1", "--no-progress",
                            "--features", "results/demo/features.h5", "--method", method, "--bits", "8",
                            "-o", str(out)], cwd=wd, capture_output=True, text=True)
        assert q.returncode == 0, q.stderr
        assert out.read_bytes() == (wd / f"results/demo/{method}/8/model.pt").read_bytes(), method
    # a by-hand search over the index works
    q = subprocess.run([cmimh, "search", str(wd / "results/demo/cmimh/16/index"), "--image",
                        str(next((wd / "data/demo/images").glob("*.jpg"))), "-k", "3"],
                       capture_output=True, text=True, cwd=wd)
    assert q.returncode == 0, q.stderr
    hits = [json.loads(l) for l in q.stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]


def test_failing_stage_shows_its_error_line_and_changed_settings_rebuild_the_image_features(tmp_path):
    """The issue's path: input_size 64 -> 96 with a truncated image fails at extract_image_shard with
    the stage's own line on the console; after restoring the image, the FC7 is extracted again at
    96 px (not the old 64-px file reused), and what the rules print is readable."""
    import h5py

    wd = tiny_config(tmp_path / "run")
    smk(wd, "--cores", "2", "results/demo/features.h5")
    image = sorted((wd / "data/demo/images").glob("*.jpg"))[5]
    good = image.read_bytes()
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["datasets"]["demo"]["image_features"]["input_size"] = 96
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    image.write_bytes(good[:40])
    p = smk(wd, "--cores", "2", "results/demo/features.h5", check=False)
    assert p.returncode != 0
    console = (p.stdout + p.stderr).splitlines()
    assert any(line.startswith(f"cmimh: error: unreadable image for id {image.stem}: ") for line in console), console
    assert "Traceback" not in p.stdout + p.stderr
    commands = [line for line in console if "/cmimh " in line]
    assert commands and all(len(c) < 400 and "{" not in c for c in commands), commands
    image.write_bytes(good)
    smk(wd, "--cores", "2", "results/demo/features.h5")
    with h5py.File(wd / "results/demo/intermediate/image.h5") as f:
        assert json.loads(f.attrs["image_settings"])["input_size"] == 96
    with h5py.File(wd / "results/demo/features.h5") as f:
        assert json.loads(f.attrs["provenance"])["image"]["input_size"] == 96


# ----------------------------------------------------------------------------- studies and tune (dry runs)
def study_config(workdir: Path, **over) -> Path:
    """The tiny config with small study and tune settings (dry runs only: nothing trains)."""
    wd = tiny_config(workdir, **over)
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["methods"] = ["cmimh"]
    cfg["studies"] = {"report": [], "bits": 8, "code_lengths": [8, 16], "mi_weights": [0, 0.5, 2],
                      "kl_weights": [0.1, 1], "train_size_bits": [8], "train_size_methods": ["cmimh", "cvh"],
                      "critic_samples": [1, 5], "tc_bits": [8, 16], "code_lengths_methods": None}
    cfg["datasets"]["demo"]["studies"] = {"train_sizes": [20, 40]}
    cfg["datasets"]["demo"]["tune"] = {}
    cfg["tune"] = {"grid": {"cmimh": {"mi": [1, 2], "kl": [0.5], "lr": [0.001]}}, "val_queries": 20, "folds": 2,
                   "bits": 8}
    cfg.update(over)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def planned(stdout: str) -> dict[str, int]:
    """The dry run's job counts per rule (its 'Job stats' table)."""
    counts: dict[str, int] = {}
    lines = stdout.splitlines()
    start = lines.index("Job stats:") + 3
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def planned_runs(stdout: str) -> set[tuple[str, int]]:
    """(method, bits) of every planned training run."""
    import re

    return {(m, int(b)) for m, b in re.findall(r"results/demo/([^/\s,]+)/(\d+)/model\.pt", stdout)}


STUDY_RUNS = {
    "code_lengths": {("cmimh", 8), ("cmimh", 16)},
    "mi_sweep": {("cmimh-mi0", 8), ("cmimh-mi0.5", 8), ("cmimh-mi2", 8)},
    "kl_sweep": {("cmimh-kl0.1", 8), ("cmimh-kl1", 8)},
    "train_size": {("cmimh-ntrain20", 8), ("cmimh-ntrain40", 8), ("cvh-ntrain20", 8), ("cvh-ntrain40", 8)},
    "critic_input": {("cmimh", 8), ("cmimh-samples1", 8), ("cmimh-samples5", 8)},
    "ablation": {("cmimh", 8), ("cmimh_no_rec", 8), ("cmimh_no_mi", 8), ("cmimh_no_kl", 8), ("cmimh_no_tc", 8),
                 ("cmimh_no_bal", 8)},
    "tc_study": {("cmimh", 8), ("cmimh_no_tc", 8), ("cmimh", 16), ("cmimh_no_tc", 16)},
}


def rule_inputs(stdout: str, rule: str) -> str:
    """The `input:` line of a planned job of `rule`."""
    block = stdout.split(f"rule {rule}:\n", 1)[1]
    return next(line for line in block.splitlines() if line.strip().startswith("input:"))


def test_study_targets_plan_one_run_per_value(tmp_path):
    """Every study target at once (one dry run keeps this fast): each table reads exactly its runs,
    one train/encode/evaluate job per distinct run, runs shared between studies planned once."""
    wd = study_config(tmp_path)
    p = smk(wd, "-n", "--cores", "2", *STUDY_RUNS)
    jobs = planned(p.stdout)
    for target, runs in STUDY_RUNS.items():
        assert jobs[f"{target}_table"] == 1 and jobs[target] == 1, target
        inputs = rule_inputs(p.stdout, f"{target}_table")
        assert planned_runs(inputs.replace("metrics.json", "model.pt")) == runs, target
        assert f"results/demo/studies/{target}.md" in p.stdout and f"results/demo/studies/{target}.png" in p.stdout
    every = set().union(*STUDY_RUNS.values())
    assert planned_runs(p.stdout) == every
    assert jobs["train"] == jobs["encode"] == jobs["evaluate"] == len(every)


def test_one_study_target_plans_only_its_runs(tmp_path):
    wd = study_config(tmp_path)
    p = smk(wd, "-n", "--cores", "2", "mi_sweep")
    assert planned_runs(p.stdout) == STUDY_RUNS["mi_sweep"] and planned(p.stdout)["train"] == 3


def test_studies_target_builds_every_table(tmp_path):
    wd = study_config(tmp_path)
    jobs = planned(smk(wd, "-n", "--cores", "2", "studies").stdout)
    assert all(jobs[f"{t}_table"] == 1 for t in STUDY_RUNS) and "tune_select" not in jobs


def test_study_epochs_override_gives_study_runs_their_own_folders(tmp_path):
    wd = study_config(tmp_path)
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["datasets"]["demo"]["studies"]["epochs"] = 3
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    p = smk(wd, "-n", "--cores", "2", "train_size")
    assert planned_runs(p.stdout) == {("cmimh-ntrain20-epochs3", 8), ("cmimh-ntrain40-epochs3", 8),
                                      ("cvh-ntrain20", 8), ("cvh-ntrain40", 8)}


def test_tune_target_plans_one_run_per_point_and_fold(tmp_path):
    """Each grid point on each fold is an ordinary run (train, encode, evaluate) of a -val variant."""
    wd = study_config(tmp_path)
    p = smk(wd, "-n", "--cores", "2", "tune")
    jobs = planned(p.stdout)
    assert jobs["train"] == jobs["encode"] == jobs["evaluate"] == 4 and jobs["tune_select"] == 1
    assert planned_runs(p.stdout) == {(f"cmimh-mi{m}-kl0.5-lr0.001-val{f}", 8) for m in (1, 2) for f in (0, 1)}
    assert "results/demo/tune/cmimh.json" in p.stdout and "results/demo/studies/tune.md" in p.stdout


def test_tuned_method_trains_with_the_tune_choice(tmp_path):
    wd = study_config(tmp_path, methods=["cmimh", "cmimh-tuned"])
    p = smk(wd, "-n", "--cores", "2", "-p", "all")
    jobs = planned(p.stdout)
    assert jobs["train"] == 8 and jobs["tune_select"] == 1  # 4 validation runs, cmimh and cmimh-tuned at 8, 16
    train_cmds = [line for line in p.stdout.splitlines() if " train --config" in line]
    assert sum("--method cmimh-tuned" in c and "--tuned results/demo/tune/cmimh.json" in c for c in train_cmds) == 2
    assert not any("--method cmimh " in c and "--tuned" in c for c in train_cmds)


def test_report_studies_go_into_the_report(tmp_path):
    wd = study_config(tmp_path)
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["studies"]["report"] = ["mi_sweep", "tune"]
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    p = smk(wd, "-n", "--cores", "2", "all")
    jobs = planned(p.stdout)
    assert jobs["mi_sweep_table"] == 1 and jobs["tune_select"] == 1 and jobs["report"] == 1
    report_inputs = p.stdout.split("rule report:")[1].split("output:")[0]
    assert "results/demo/studies/mi_sweep.md" in report_inputs and "results/demo/studies/tune.md" in report_inputs


@pytest.mark.parametrize("key, value, needle", [
    ("studies", {"mi_weights": [-1]}, "studies.mi_weights[0]: -1 is less than the minimum of 0"),
    ("tune", {"grid": {"cmimh": {"nope": [1]}}}, "tune.grid.cmimh: unknown key 'nope'"),
    ("studies", {"report": ["nope"]}, "studies.report[0]: 'nope' is not one of"),
])
def test_bad_study_settings_stop_at_start(tmp_path, key, value, needle):
    wd = study_config(tmp_path, **{key: value})
    p = smk(wd, "-n", "--cores", "1", "studies", check=False)
    assert p.returncode != 0
    lines = [l for l in p.stderr.splitlines() if l.startswith("cmimh:")]
    assert len(lines) == 1 and needle in lines[0], p.stderr
