"""The one method interface (pipeline/methods/base.py), its registry and method names
(pipeline/methods/__init__.py): one model.pt format and one history writer for every method."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pipeline import methods
from pipeline.errors import PipelineError
from pipeline.methods.base import Hasher, load_model, save_model, write_history
from pipeline.settings import Settings, setting


@dataclass(frozen=True)
class SignConfig(Settings):
    alpha: float = setting(1.0, "unused", min=0)


class Sign(Hasher):
    """A fake method: code = sign of the first `bits` centred columns (known answer)."""

    name = "sign"
    Config = SignConfig
    variants = {"alpha": ("alpha",)}

    def __init__(self, bits, config=None):
        super().__init__(bits, config)
        self.mx_ = self.my_ = None

    def fit(self, x, y, *, seed=0, device="cpu", progress=False):
        self.mx_, self.my_ = x.mean(0), y.mean(0)
        return [{"epoch": 1, "loss": 1.5}, {"epoch": 2, "loss": 0.5}]

    def encode_image(self, x):
        return (x[:, :self.bits] - self.mx_[:self.bits] > 0).astype(np.uint8)

    def encode_text(self, y):
        return (y[:, :self.bits] - self.my_[:self.bits] > 0).astype(np.uint8)

    def state(self):
        return {"mx": self.mx_, "my": self.my_}

    @classmethod
    def from_state(cls, bits, config, state, device="cpu"):
        m = cls(bits, config)
        m.mx_, m.my_ = state["mx"], state["my"]
        return m


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(methods.REGISTRY, "sign", Sign)
    return Sign


def test_one_model_file_and_history_for_any_method(fake, tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(40, 5)).astype(np.float32)
    model = fake(4, methods.parse_method("sign-alpha2").config({}))
    assert model.config.alpha == 2.0 and not model.fitted
    hist = model.fit(x, y)
    assert model.fitted
    write_history(tmp_path / "log.csv", hist)
    assert (tmp_path / "log.csv").read_text().splitlines() == ["epoch,loss", "1,1.5", "2,0.5"]
    save_model(tmp_path / "model.pt", model, {"k": 1})
    loaded, meta = load_model(tmp_path / "model.pt")
    assert meta == {"k": 1} and isinstance(loaded, fake) and loaded.config == model.config
    assert np.array_equal(loaded.encode_image(x), model.encode_image(x))
    assert np.array_equal(loaded.encode_text(y), (y[:, :4] - y.mean(0)[:4] > 0).astype(np.uint8))
    d = loaded.diagnostics(x, y, loaded.encode_image(x), loaded.encode_text(y))
    assert d["tc_image"] is None and 0 <= d["corr_mse_image"] <= 1


def test_load_model_errors(tmp_path):
    with pytest.raises(PipelineError, match="model file not found"):
        load_model(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(PipelineError, match="cannot read model file"):
        load_model(tmp_path / "junk.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(PipelineError, match="is not a model file"):
        load_model(tmp_path / "other.pt")
    torch.save({"format": "cmimh-model/1"}, tmp_path / "old.pt")
    with pytest.raises(PipelineError, match="older version: train again"):
        load_model(tmp_path / "old.pt")
    with pytest.raises(PipelineError, match="unknown method 'foo'"):
        methods.method_class("foo")


def test_every_registered_method_round_trips_through_model_pt(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(40, 5)).astype(np.float32)
    tiny = {"cmimh": {"hidden": 8, "critic_hidden": 8, "critic_dim": 4, "disc_hidden": 8, "batch_size": 10,
                      "epochs": 1}, "djsrh": {"epochs": 1, "batch_size": 10, "txt_hidden": 8},
            "fsh": {"anchors": 8, "knn": 3}}
    for name, cls in methods.REGISTRY.items():
        model = cls(4, tiny.get(name))
        model.fit(x, y, seed=0)
        save_model(tmp_path / f"{name}.pt", model)
        loaded, _ = load_model(tmp_path / f"{name}.pt")
        assert type(loaded) is cls and loaded.bits == 4, name
        assert np.array_equal(loaded.encode_image(x), model.encode_image(x)), name
        assert np.array_equal(loaded.encode_text(y), model.encode_text(y)), name


def test_method_names_and_their_variants():
    m = methods.parse_method("cmimh_no_mi-kl2-samples5-ntrain100")
    assert (m.base, m.off, m.variants, m.tuned) == ("cmimh", "mi", {"kl": 2.0, "samples": 5, "ntrain": 100}, False)
    c = m.config({"weights": {"tc": 0.2}})
    assert (c.weights.mi, c.weights.kl, c.weights.tc) == (0.0, 2.0, 0.2)
    assert (c.critic_input, c.critic_samples) == ("samples", 5) and m.train_size == 100
    assert methods.parse_method("cvh-reg0.5").config({}).reg == 0.5
    assert methods.parse_method("cmimh-val1-tuned").fold == 1
    assert methods.parse_method("cmimh-mi1").with_variants(val=0) == "cmimh-mi1-val0"
    # a tune choice first, then the name's own variants win
    assert methods.parse_method("cmimh-kl1-tuned").config({}, tuned={"kl": 0.1, "mi": 2}).weights.kl == 1.0
    for bad, needle in (("magic", "unknown method 'magic'"), ("cvh_no_mi", "cvh has no term 'mi'"),
                        ("cvh-kl2", "cvh has no variant 'kl'"), ("cmimh-kl1-kl2", "variant kl given twice"),
                        ("cmimh-samples1.5", "samples must be an integer"), ("cmimh-lr0", "lr must be > 0")):
        with pytest.raises(PipelineError, match=needle):
            methods.parse_method(bad)


def test_seed_repetitions_change_the_fit_not_the_split():
    m0, m1, m2 = (methods.parse_method(n) for n in ("cmimh", "cmimh-seed1", "cmimh-seed2"))
    assert m0.training_seed(7) == 7 and m0.repeat == 0  # repetition 0 is the plain run
    seeds = {m.training_seed(7) for m in (m0, m1, m2)}
    assert len(seeds) == 3 and m1.training_seed(7) == methods.parse_method("cmimh-seed1").training_seed(7)
    assert m1.config({}) == m0.config({}) and m1.train_size is None  # same settings, same training rows


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
@pytest.mark.parametrize("modality", ["image", "text"])
def test_features_the_same_in_every_training_row_are_refused_by_every_method(name, modality):
    """All-zero features (a failed extraction): CMIMH and CMFH trained on them without a word, every
    item of that modality getting one code."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 6)).astype(np.float32), rng.normal(size=(30, 5)).astype(np.float32)
    if modality == "image":
        x[:] = 0
    else:
        y[:] = 3.5
    tiny = {"cmimh": {"hidden": 8, "critic_hidden": 8, "disc_hidden": 8, "critic_dim": 8, "epochs": 1,
                      "batch_size": 10}, "djsrh": {"epochs": 1, "batch_size": 10, "txt_hidden": 8},
            "fsh": {"anchors": 12, "knn": 3}}
    model = methods.REGISTRY[name](4, tiny.get(name))
    with pytest.raises(PipelineError, match=rf"^{name}: the {modality} features are the same in all 30 training rows"):
        model.fit(x, y, seed=0)
    # one column that varies is enough: constant columns beside it are allowed (z-scored to 0)
    x2 = rng.normal(size=(30, 6)).astype(np.float32)
    x2[:, 1:] = 0
    model.fit(x2, y if modality == "image" else rng.normal(size=(30, 5)).astype(np.float32), seed=0)
