"""The paper's three data sets: `snakemake -n --config dataset=X` plans the whole DAG from
download to report (nothing is downloaded by a dry run)."""

from __future__ import annotations

import pytest

from test_workflow import REPO, smk


@pytest.mark.parametrize("dataset", ["mirflickr25k", "nuswide", "mscoco"])
def test_dry_run_plans_full_dag(tmp_path, dataset):
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    p = smk(tmp_path, "-n", "--cores", "8", "all", "--config", f"dataset={dataset}")
    for rule in ("prepare", "extract_text", "extract", "train", "encode", "evaluate", "report"):
        assert f"\n{rule} " in p.stdout, (rule, p.stdout[-2000:])
    assert f"data/{dataset}/manifest.jsonl" in p.stdout
    assert f"results/{dataset}/report.md" in p.stdout
