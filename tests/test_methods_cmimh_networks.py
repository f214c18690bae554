"""CMIMH networks: sampling + STE, switched-off terms, encoding, settings and device checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.methods import cmimh_losses as L
from pipeline.methods.cmimh import CMIMH, Config, make_networks

SMALL = {"hidden": 32, "critic_hidden": 16, "critic_dim": 8, "disc_hidden": 16}


def _model(weights: dict | None = None, **kw):
    torch.manual_seed(0)
    return make_networks(12, 9, 6, dict(SMALL, weights=weights or {}, **kw))


def resolve_settings(d: dict) -> dict:
    """The settings CMIMH trains with: its Config's defaults, ``d`` over them, validated."""
    return Config.from_dict(d, "cmimh settings").to_dict()


@pytest.mark.parametrize("ste", ["identity", "sigmoid", "probs"])
def test_gradients_reach_encoder_through_ste_from_reconstruction_alone(ste):
    m = _model({"rec": 1, "mi": 0, "kl": 0, "tc": 0, "bal": 0}, ste=ste)
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    b = m.sample(m.enc_x(x), torch.Generator().manual_seed(2))
    assert set(torch.unique(b.detach()).tolist()) <= {0.0, 1.0}
    L.reconstruction(x, m.dec_x(b)).backward()
    g = m.enc_x[0].weight.grad
    assert g is not None and g.abs().sum().item() > 0


def test_ste_identity_has_unit_derivative_wrt_logits():
    m = _model(ste="identity")
    a = torch.tensor([[-3.0, 0.2, 5.0]], requires_grad=True)
    m.sample(a, torch.Generator().manual_seed(0)).sum().backward()
    assert torch.equal(a.grad, torch.ones_like(a))


def test_ste_probs_derivative_is_sigmoid_prime():
    m = _model(ste="probs")
    a = torch.tensor([[-3.0, 0.2, 5.0]], requires_grad=True)
    m.sample(a, torch.Generator().manual_seed(0)).sum().backward()
    p = 1 / (1 + np.exp(-np.array([-3.0, 0.2, 5.0])))
    np.testing.assert_allclose(a.grad.numpy()[0], p * (1 - p), rtol=1e-5)


def test_samples_are_bernoulli_p():
    m = _model()
    logits = torch.tensor([-2.0, 0.0, 1.5])
    a = logits.repeat(40000, 1)
    b = m.sample(a, torch.Generator().manual_seed(0))
    want = 1 / (1 + np.exp(-logits.numpy()))
    np.testing.assert_allclose(b.mean(0).numpy(), want, atol=0.01)


def test_all_networks_exist_by_default():
    m = _model()
    names = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert names == {"enc_x", "enc_y", "dec_x", "dec_y", "critic_g", "critic_h", "disc_x", "disc_y"}
    assert m.critic_g[-1].out_features == SMALL["critic_dim"]


def test_weight_zero_removes_networks():
    m = _model({"mi": 0})
    assert m.critic_g is None and m.critic_h is None and not m.critic_parameters()
    assert not any(n.startswith("critic") for n, _ in m.named_parameters())
    m = _model({"tc": 0})
    assert m.disc_x is None and m.disc_y is None and not m.discriminator_parameters()
    assert not any(n.startswith("disc") for n, _ in m.named_parameters())
    m = _model({"rec": 0})
    assert m.dec_x is None and not m.decoder_parameters()
    assert m.critic_g is not None and m.disc_x is not None


def test_encode_is_deterministic_threshold_of_p():
    m = _model()
    x = np.random.default_rng(0).normal(size=(50, 12)).astype(np.float32)
    c1, c2 = m.encode_image(x, batch_size=7), m.encode_image(x)
    assert c1.dtype == np.uint8 and c1.shape == (50, 6)
    assert np.array_equal(c1, m.encode_image(x))  # the same computation: the same bits
    assert np.array_equal(c1, (m.probs_image(x, batch_size=7) >= 0.5).astype(np.uint8))
    # another batch size sums in another order: p agrees to float32 rounding, and so do the
    # codes except where p is within that rounding of the threshold
    p1, p2 = m.probs_image(x, batch_size=7), m.probs_image(x)
    np.testing.assert_allclose(p1, p2, rtol=0, atol=1e-6)
    sure = np.abs(p2 - 0.5) > 1e-6
    assert np.array_equal(c1[sure], c2[sure])
    assert m.training  # encoding does not leave the model in eval mode if it was training
    y = np.random.default_rng(1).normal(size=(4, 9))
    assert m.encode_text(y).shape == (4, 6)


def test_encode_rejects_wrong_dimension():
    m = _model()
    with pytest.raises(PipelineError, match="encode_image"):
        m.encode_image(np.zeros((3, 11), np.float32))
    with pytest.raises(PipelineError, match="encode_text"):
        m.encode_text(np.zeros(9, np.float32))


def test_standardization_buffers_apply_to_raw_features():
    m = _model()
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(5.0, 3.0, size=(200, 12)), dtype=torch.float32)
    y = torch.tensor(rng.normal(-2.0, 0.5, size=(200, 9)), dtype=torch.float32)
    y[:, 3] = 7.0  # constant feature: std kept at 1
    m.set_standardization(x, y)
    np.testing.assert_allclose(m.mean_x.numpy(), x.numpy().mean(0), rtol=1e-5)
    np.testing.assert_allclose(m.std_x.numpy(), x.numpy().std(0), rtol=1e-5)
    assert m.std_y[3].item() == 1.0
    z = m.standardize_x(x).numpy()
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    # encoding raw features == running the encoder on hand-standardised ones
    with torch.no_grad():
        hand = (torch.sigmoid(m.enc_x(torch.tensor((x.numpy() - x.numpy().mean(0)) / x.numpy().std(0))))
                >= 0.5).numpy()
    assert np.array_equal(m.encode_image(x.numpy()), hand.astype(np.uint8))
    # buffers travel in the state dict
    assert {"mean_x", "std_x", "mean_y", "std_y"} <= set(m.state_dict())


def test_standardize_false_keeps_identity():
    m = _model(standardize=False)
    x = torch.randn(30, 12) * 4 + 2
    m.set_standardization(x, torch.randn(30, 9))
    assert torch.equal(m.mean_x, torch.zeros(12)) and torch.equal(m.std_x, torch.ones(12))


def test_resolve_settings_defaults_and_overrides():
    s = resolve_settings({"weights": {"kl": 0.2}, "lr": 0.05})
    assert s["weights"] == {"rec": 1.0, "mi": 1.0, "kl": 0.2, "tc": 0.1, "bal": 0.1}
    assert s["lr"] == 0.05 and s["batch_size"] == 100 and s["iterations"] is None
    # PyYAML reads 1e-3 (no dot) as a string; numeric strings are accepted
    s = resolve_settings({"lr": "1e-3", "weights": {"tc": "0.2"}})
    assert s["lr"] == 0.001 and s["weights"]["tc"] == 0.2


@pytest.mark.parametrize("bad, match", [
    ({"lerning_rate": 1}, "unknown key"),
    ({"weights": {"mu": 1}}, "unknown weight"),
    ({"weights": {"kl": -0.1}}, "weights.kl"),
    ({"weights": {"mi": float("nan")}}, "weights.mi"),
    ({"batch_size": 1}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"epochs": 0}, "epochs"),
    ({"iterations": -3}, "iterations"),
    ({"lr": 0}, "lr"),
    ({"momentum": -1}, "momentum"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"ste": "gumbel"}, "ste"),
    ({"critic_input": "codes"}, "critic_input"),
    ({"standardize": "yes"}, "standardize"),
    ({"hidden": True}, "hidden"),
])
def test_bad_settings_raise_one_line(bad, match):
    with pytest.raises(PipelineError, match=match) as e:
        resolve_settings(bad)
    assert "\n" not in str(e.value)


def test_bad_bits_raise():
    with pytest.raises(PipelineError, match="bits"):
        CMIMH(0, SMALL)


def test_dropout_only_in_encoders_and_only_when_asked():
    default = _model()
    assert not any(isinstance(mod, torch.nn.Dropout) for mod in default.modules())
    # today's module indices (so model files saved before the option still load)
    assert sorted(k for k in default.state_dict() if k.startswith("enc_x.")) == [
        "enc_x.0.bias", "enc_x.0.weight", "enc_x.2.bias", "enc_x.2.weight", "enc_x.4.bias", "enc_x.4.weight"]
    m = _model(dropout=0.5)
    for name in ("enc_x", "enc_y"):
        drops = [mod for mod in getattr(m, name) if isinstance(mod, torch.nn.Dropout)]
        assert len(drops) == 2 and all(d.p == 0.5 for d in drops)
    for name in ("dec_x", "dec_y", "critic_g", "critic_h", "disc_x", "disc_y"):
        assert not any(isinstance(mod, torch.nn.Dropout) for mod in getattr(m, name).modules())
    x = np.random.default_rng(0).normal(size=(30, 12)).astype(np.float32)
    m.train()
    assert np.array_equal(m.probs_image(x), m.probs_image(x))  # inference switches dropout off
    assert m.training  # and restores the mode
    a = m.enc_x(torch.from_numpy(x))
    assert not torch.equal(a, m.enc_x(torch.from_numpy(x)))  # training mode: dropout is active


@pytest.mark.parametrize("bad, match", [({"dropout": 1.0}, "dropout"), ({"lr_schedule": "step"}, "lr_schedule"),
                                        ({"rec_norm": "max"}, "rec_norm"), ({"kl_warmup": -1}, "kl_warmup")])
def test_departure_settings_are_validated(bad, match):
    with pytest.raises(PipelineError, match=match):
        Config.from_dict(bad, "cmimh settings")


def test_departures_default_off():
    c = Config()
    assert (c.dropout, c.lr_schedule, c.rec_norm, c.kl_warmup) == (0.0, "constant", "sum", 0)
    for f in Config.fields():
        if f.name in ("dropout", "lr_schedule", "rec_norm", "kl_warmup"):
            assert "DEPARTURE" in f.metadata["doc"], f.name
