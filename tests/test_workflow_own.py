"""Your own collection end to end (slow): a folder of 300 images with captions runs through
`snakemake all` to a report and a searchable index: without labels, paired metrics only; with
labels, both kinds. The folder is made with the demo's generator, as KEY.jpg + KEY.txt (+ KEY.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_collection
from test_workflow import smk, tiny_config

N = 300


def own_config(wd: Path, folder: Path, text: dict) -> Path:
    wd = tiny_config(wd)
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["dataset"] = "mine"
    cfg["methods"] = ["cmimh", "cvh"]
    cfg["studies"] = {**cfg.get("studies", {}), "report": ["code_lengths"], "code_lengths": [8, 16]}
    cfg["datasets"]["mine"] = {
        "source": "folder", "path": str(folder), "n_query": 60, "n_train": 240,
        "image_features": {"model": "alexnet", "weights": "random", "pca_dim": 16, "batch_size": 50, "input_size": 64},
        "text_features": text,
        "method_settings": cfg["datasets"]["demo"]["method_settings"],
    }
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


@pytest.mark.slow
@pytest.mark.parametrize("labels", [False, True], ids=["no-labels", "labels"])
def test_own_folder_end_to_end(tmp_path, labels):
    folder = tmp_path / "photos"
    write_collection(folder, N, labels=labels, tags=False)
    text = {"kind": "bow", "vocab_size": 300, "min_count": 2} if not labels else {"kind": "sentence"}
    wd = own_config(tmp_path / "run", folder, text)
    smk(wd, "--cores", "2", "all")
    res = wd / "results" / "mine"
    for bits in (8, 16):
        m = json.loads((res / f"cmimh/{bits}/metrics.json").read_text())
        assert m["labelled"] is labels and m["paired"]["n"] == 60
        for task in ("i2t", "t2i"):
            p = m["paired"][task]
            assert 0 <= p["r@1"] <= p["r@5"] <= p["r@10"] <= 1 and 1 <= p["median_rank"] <= 60 and 0 < p["map"] <= 1
        assert ("map@1000" in m) is labels
        assert (res / f"cmimh/{bits}/index/index.h5").is_file()
    report = (res / "report.md").read_text()
    assert "## Paired retrieval (60 held-out pairs" in report and "| cmimh | 8 |" in report
    assert ("## mAP@1000" in report) is labels and ("Img→Img" in report) is labels
    assert "Code lengths (mine, bits 8, 16, " in report
    assert (res / "plots" / "cmimh_paired_recall.png").is_file()
    # the index answers raw queries with the extractors that made the database
    cmimh = str(Path(sys.executable).parent / "cmimh")
    image = next(folder.rglob("*.jpg"))
    for query in (["--text", "a red ball and a blue box"], ["--image", str(image)]):
        q = subprocess.run([cmimh, "search", str(res / "cvh/16/index"), *query, "-k", "3"], capture_output=True,
                           text=True, cwd=wd)
        assert q.returncode == 0, q.stderr
        assert [json.loads(line)["rank"] for line in q.stdout.splitlines()] == [1, 2, 3]
    # ... and served: the same hits through `cmimh serve`'s API, and the hit's image is served
    from fastapi.testclient import TestClient

    from pipeline.search.index import load_index
    from pipeline.search.service import Service, create_app

    want = subprocess.run([cmimh, "search", str(res / "cvh/16/index"), "--text", "a red ball", "-k", "5"],
                          capture_output=True, text=True, cwd=wd)
    assert want.returncode == 0, want.stderr
    service = Service({"mine": load_index(res / "cvh/16/index")})
    try:
        with TestClient(create_app(service)) as c:
            r = c.get("/api/search", params={"text": "a red ball", "k": 5})
            assert r.status_code == 200, r.text
            hits = r.json()["hits"]
            assert [(h["id"], h["distance"]) for h in hits] == \
                [(json.loads(x)["id"], json.loads(x)["distance"]) for x in want.stdout.splitlines()]
            assert all(h["caption"] for h in hits)
            img = c.get(hits[0]["image"])
            assert img.status_code == 200 and img.headers["content-type"].startswith("image/")
    finally:
        service.close()
