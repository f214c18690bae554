"""The raw form's shared helpers."""

import pytest

from pipeline.data.manifest import begin_rewrite
from pipeline.errors import PipelineError


def test_begin_rewrite_removes_the_manifest_first(tmp_path):
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    (tmp_path / "meta.json").write_text("{}")
    folder = begin_rewrite(tmp_path, "x", "images")
    assert folder == tmp_path / "images" and folder.is_dir()
    assert not (tmp_path / "manifest.jsonl").exists() and (tmp_path / "meta.json").exists()
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(PipelineError, match=r"^x: cannot create .*blocker"):
        begin_rewrite(tmp_path / "blocker", "x")
