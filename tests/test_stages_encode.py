"""The encode stage: codes.h5 from a model and a features file."""

import json

import pytest

from pipeline.cli import main

from conftest import make_features_h5


def _features(tmp_path, name, dx, dy):
    from pipeline.stages import extract

    out = tmp_path / f"{name}.h5"
    extract.run_import(make_features_h5(tmp_path / f"src_{name}.h5", n=60, dx=dx, dy=dy),
                       {"dataset": "x", "seed": 0, "n_query": 10, "n_train": 30}, out)
    return out


@pytest.mark.parametrize("method", ["cvh", "cmimh"])
def test_a_model_of_other_features_names_both_files(tmp_path, capsys, method):
    """A model trained on 12-d image features, encoding a 16-d features file: one line naming the
    model, the features file and both widths, and no codes file."""
    small, big = _features(tmp_path, "small", 12, 9), _features(tmp_path, "big", 16, 9)
    tiny = {"hidden": 8, "critic_hidden": 8, "critic_dim": 4, "disc_hidden": 8, "epochs": 1, "batch_size": 10}
    s = json.dumps({"dataset": "x", "seed": 0, "device": "cpu", "method": method,
                    "settings": tiny if method == "cmimh" else {}})
    model = tmp_path / "m.pt"
    assert main(["train", "--settings", s, "--features", str(small), "--bits", "8", "--method", method,
                 "--no-progress", "-o", str(model)]) == 0
    capsys.readouterr()
    out = tmp_path / "codes.h5"
    assert main(["encode", "--settings", s, "--model", str(model), "--features", str(big), "-o", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"cmimh: error: model {model} does not fit the features {big} (image 16-d, text 9-d"), line
    assert "12" in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".codes")]
