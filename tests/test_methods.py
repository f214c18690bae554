"""The method registry: training rows, dispatch, and model files of any method."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from pipeline import methods
from pipeline.errors import PipelineError


class _Sign:
    """A fake baseline: code = sign of the first `bits` centred columns (known answer)."""

    def __init__(self, bits, settings=None, seed=0, device="cpu"):
        self.bits, self.settings, self.seed = bits, dict(settings or {}), seed
        self.mx = self.my = None

    def fit(self, x, y, progress=False):
        self.mx, self.my = x.mean(0), y.mean(0)
        return [{"epoch": 1, "loss": 1.5}, {"epoch": 2, "loss": 0.5}]

    def encode_image(self, x):
        return (x[:, :self.bits] - self.mx[:self.bits] > 0).astype(np.uint8)

    def encode_text(self, y):
        return (y[:, :self.bits] - self.my[:self.bits] > 0).astype(np.uint8)

    def state(self):
        return {"bits": self.bits, "settings": self.settings, "mx": self.mx, "my": self.my}

    @classmethod
    def from_state(cls, st):
        m = cls(st["bits"], st["settings"])
        m.mx, m.my = st["mx"], st["my"]
        return m


@pytest.fixture
def fake(monkeypatch):
    mod = types.SimpleNamespace(Model=_Sign, NAME="cvh", DEFAULTS={})
    monkeypatch.setattr(methods, "baseline_module", lambda name: mod)
    return mod


def _feats(n=50):
    return types.SimpleNamespace(database=np.arange(10, n), train=np.arange(10, 30), query=np.arange(10))


def test_training_rows_default_and_train_size():
    f = _feats()
    assert np.array_equal(methods.training_rows(f, {"seed": 0}), f.train)
    a = methods.training_rows(f, {"seed": 0, "train_size": 15})
    assert len(a) == 15 and len(set(a)) == 15 and set(a) <= set(f.database)
    assert np.array_equal(a, methods.training_rows(f, {"seed": 0, "train_size": 15}))  # seeded
    assert not np.array_equal(a, methods.training_rows(f, {"seed": 1, "train_size": 15}))
    with pytest.raises(PipelineError, match="train_size 41 must be between 1 and the database size 40"):
        methods.training_rows(f, {"seed": 0, "train_size": 41})


def test_baseline_train_save_load_round_trip(fake, tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(40, 5)).astype(np.float32)
    settings = {"seed": 0, "baseline": {"name": "cvh", "alpha": 2}}
    log_csv = tmp_path / "log.csv"
    model, hist = methods.train_method("cvh", x, y, 4, settings, 0, torch.device("cpu"), log_csv=log_csv)
    assert model.settings == {"alpha": 2}  # the name is not passed as a setting
    assert log_csv.read_text().splitlines() == ["epoch,loss", "1,1.5", "2,0.5"]
    methods.save_trained(tmp_path / "model.pt", "cvh-ntrain40", model, {"k": 1})
    loaded, meta = methods.load_trained(tmp_path / "model.pt", torch.device("cpu"))
    assert meta == {"k": 1}
    assert np.array_equal(loaded.encode_image(x), model.encode_image(x))
    assert np.array_equal(loaded.encode_text(y), (y[:, :4] - y.mean(0)[:4] > 0).astype(np.uint8))
    d = methods.code_diagnostics(loaded, x, y, loaded.encode_image(x), loaded.encode_text(y))
    assert d["tc_image"] is None and 0 <= d["corr_mse_image"] <= 1


def test_load_trained_errors(tmp_path):
    with pytest.raises(PipelineError, match="model file not found"):
        methods.load_trained(tmp_path / "none.pt", torch.device("cpu"))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(PipelineError, match="cannot read model file"):
        methods.load_trained(tmp_path / "junk.pt", torch.device("cpu"))
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(PipelineError, match="is not a model file"):
        methods.load_trained(tmp_path / "other.pt", torch.device("cpu"))
    with pytest.raises(PipelineError, match="unknown baseline 'foo'"):
        methods.baseline_module("foo")


def test_cmimh_still_round_trips(tmp_path):
    from pipeline.model.cmimh import CMIMH

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 6)).astype(np.float32), rng.normal(size=(20, 5)).astype(np.float32)
    settings = {"seed": 0, "cmimh": {"hidden": 8, "critic_hidden": 8, "critic_dim": 4, "disc_hidden": 8,
                                     "batch_size": 10, "epochs": 1}}
    model, _ = methods.train_method("cmimh_no_tc", x, y, 4, settings, 0, torch.device("cpu"), progress=False)
    assert isinstance(model, CMIMH)
    methods.save_trained(tmp_path / "m.pt", "cmimh_no_tc", model, {})
    loaded, _ = methods.load_trained(tmp_path / "m.pt", torch.device("cpu"))
    assert np.array_equal(loaded.encode_image(x), model.encode_image(x))


@pytest.mark.parametrize("method", ["cmimh", "cmfh", "cvh"])
@pytest.mark.parametrize("modality", ["image", "text"])
def test_features_the_same_in_every_training_row_are_refused_by_every_method(method, modality):
    """All-zero features (a failed extraction): CMIMH and CMFH trained on them without a word, every
    item of that modality getting one code."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 6)).astype(np.float32), rng.normal(size=(30, 5)).astype(np.float32)
    if modality == "image":
        x[:] = 0
    else:
        y[:] = 3.5
    s = {"cmimh": {"hidden": 8, "critic_hidden": 8, "disc_hidden": 8, "critic_dim": 8, "epochs": 1, "batch_size": 10},
         "baseline": {}}
    with pytest.raises(PipelineError, match=rf"^{method}: the {modality} features are the same in all 30 training rows"):
        methods.train_method(method, x, y, 4, s, 0, torch.device("cpu"), progress=False)
