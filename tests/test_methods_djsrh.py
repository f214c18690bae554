"""DJSRH baseline (pipeline/baselines/djsrh.py): formulas against hand-computed values,
training behaviour on a toy problem, determinism, state round trip and input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipeline.methods import djsrh
from pipeline.methods.djsrh import DJSRH, joint_affinity, reconstruction_loss
from pipeline.errors import PipelineError
from pipeline.eval.codes import pack_bits
from pipeline.eval.metrics import map_at_k

FAST = {"epochs": 10, "txt_hidden": 64}


def toy(n_per: int = 50, seed: int = 0, dx: int = 16, dy: int = 24, k: int = 4, dc: int = 8):
    """k well-separated clusters (orthogonal centres) seen through two random linear maps + noise."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dc, k)))[0].T * 3
    a, b = rng.normal(size=(dc, dx)), rng.normal(size=(dc, dy))
    lab = np.repeat(np.arange(k), n_per)
    x = centres[lab] @ a + 0.9 * rng.normal(size=(len(lab), dx))
    y = centres[lab] @ b + 0.9 * rng.normal(size=(len(lab), dy))
    return x.astype(np.float32), y.astype(np.float32), np.eye(k, dtype=np.uint8)[lab]


@pytest.fixture(scope="module")
def toy_data():
    return toy()


@pytest.fixture(scope="module")
def fitted(toy_data):
    x, y, _ = toy_data
    m = DJSRH(16, FAST)
    hist = m.fit(x, y, seed=0)
    return m, hist


# ----------------------------------------------------------------------------- formulas
def test_joint_affinity_hand_computed():
    fx = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    fy = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    beta, eta, mu = 0.5, 0.25, 2.0
    r = 1 / math.sqrt(2)
    # S_I: cosines of (1,0), (0,1), (1,1)/sqrt2. S_T (rescaled 2c-1): items 0, 1 parallel, 2 orthogonal.
    # S~ = 0.5 S_I + 0.5 S_T = [[1, .5, t], [.5, 1, t], [t, t, 1]] with t = (r - 1) / 2.
    t = (r - 1) / 2
    sq = np.array([  # S~ S~^T by hand (S~ is symmetric)
        [1 + 0.25 + t * t, 0.5 + 0.5 + t * t, t + 0.5 * t + t],
        [0.5 + 0.5 + t * t, 0.25 + 1 + t * t, 0.5 * t + t + t],
        [t + 0.5 * t + t, 0.5 * t + t + t, 2 * t * t + 1],
    ])
    s_tilde = np.array([[1, 0.5, t], [0.5, 1, t], [t, t, 1]])
    expected = mu * ((1 - eta) * s_tilde + eta * sq / 3)
    got = joint_affinity(fx, fy, beta, eta, mu, rescale_x=False, rescale_y=True).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert got[0, 2] == pytest.approx(2 * (0.75 * t + 0.25 * 2.5 * t / 3))  # one entry fully by hand
    # without the rescale S_T(0,2) is 0 instead of -1: S~(0,2) = r/2
    got2 = joint_affinity(fx, fy, 1.0, 0.0, 1.0).numpy()
    np.testing.assert_allclose(got2, [[1, 0, r], [0, 1, r], [r, r, 1]], atol=1e-12)


def test_reconstruction_loss_hand_computed():
    # rows scaled arbitrarily: the loss uses cosines, so scale must not matter
    cx = torch.tensor([[2.0, 2.0], [0.5, -0.5]])
    cy = torch.tensor([[1.0, 1.0], [-3.0, -3.0]])
    target = torch.tensor([[1.5, 0.5], [0.5, 1.5]])
    # cos(Bx,Bx) = I; cos(By,By) = [[1,-1],[-1,1]]; cos(Bx,By) = [[1,-1],[0,0]]
    out = reconstruction_loss(cx, cy, target, lambda1=0.1, lambda2=0.3)
    assert out["loss_ii"].item() == pytest.approx((0.25 + 0.25 + 0.25 + 0.25) / 4)
    assert out["loss_tt"].item() == pytest.approx((0.25 + 2.25 + 2.25 + 0.25) / 4)
    assert out["loss_it"].item() == pytest.approx((0.25 + 2.25 + 0.25 + 2.25) / 4)
    assert out["loss"].item() == pytest.approx(1.25 + 0.1 * 0.25 + 0.3 * 1.25)


def test_alpha_schedule():
    assert djsrh.alpha_at(1, "sqrt") == 1.0
    assert djsrh.alpha_at(4, "sqrt") == pytest.approx(2.0)
    assert djsrh.alpha_at(80, "sqrt") == pytest.approx(math.sqrt(80))
    assert djsrh.alpha_at(9, "constant") == 1.0


def test_defaults_are_the_official_mirflickr_settings():
    d = djsrh.Config().to_dict()
    assert (d["beta"], d["eta"], d["mu"], d["lambda1"], d["lambda2"]) == (0.9, 0.4, 1.5, 0.1, 0.1)
    assert (d["batch_size"], d["epochs"], d["lr_img"], d["lr_txt"]) == (32, 80, 0.001, 0.01)
    assert (d["momentum"], d["weight_decay"], d["txt_hidden"]) == (0.9, 5e-4, 4096)
    json.dumps(d)


def test_one_training_step_decreases_the_loss(toy_data):
    x, y, _ = toy_data
    m = DJSRH(8, {"txt_hidden": 32})
    m._build(x.shape[1], y.shape[1], 1, torch.device("cpu"))
    xb, yb = torch.from_numpy(x[:32]), torch.from_numpy(y[:32])
    target = joint_affinity(xb, yb, 0.9, 0.4, 1.5)
    opt = m._optimizer()
    with torch.no_grad():
        before = m._batch_loss(xb, yb, target, 1.0)["loss"].item()
    step_terms = m._step(opt, xb, yb, xb, yb, 1.0)
    assert step_terms["loss"].item() == pytest.approx(before)  # the step saw the same loss
    with torch.no_grad():
        after = m._batch_loss(xb, yb, target, 1.0)["loss"].item()
    assert after < before - 1e-6


# ----------------------------------------------------------------------------- training
def test_toy_clusters_are_retrieved_across_modalities(toy_data, fitted):
    x, y, lab = toy_data
    m, hist = fitted
    q = np.arange(0, len(x), 5)
    ci, ct = m.encode_image(x), m.encode_text(y)
    assert ci.dtype == np.uint8 and ci.shape == (len(x), 16) and set(np.unique(ci)) <= {0, 1}
    i2t = map_at_k(pack_bits(ci[q]), pack_bits(ct), lab[q], lab, k=None)
    t2i = map_at_k(pack_bits(ct[q]), pack_bits(ci), lab[q], lab, k=None)
    rng = np.random.default_rng(5)
    rand = map_at_k(pack_bits(rng.integers(0, 2, (len(q), 16))), pack_bits(rng.integers(0, 2, ct.shape)),
                    lab[q], lab, k=None)
    for v in (i2t, t2i):
        assert (v - rand) / (1 - rand) > 0.9, (i2t, t2i, rand)
    d = (ci[:, None, :] != ct[None, :, :]).sum(-1)  # cross-modal Hamming distances
    same = lab.argmax(1)[:, None] == lab.argmax(1)[None, :]
    assert d[same].mean() < 3 and d[~same].mean() > 6, (d[same].mean(), d[~same].mean())
    # history: one row per epoch with the loss terms, decreasing overall, alpha = sqrt(epoch)
    assert [r["epoch"] for r in hist] == list(range(1, 11))
    assert {"loss", "loss_it", "loss_ii", "loss_tt", "alpha", "step", "seconds"} <= set(hist[0])
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert hist[3]["alpha"] == pytest.approx(2.0) and hist[-1]["step"] == 10 * (len(x) // 32)


def test_same_seed_same_codes_other_seed_other_codes(toy_data, fitted):
    x, y, _ = toy_data
    m1, h1 = fitted
    torch.manual_seed(999)  # the global RNG must not matter
    torch.rand(5)
    m2 = DJSRH(16, FAST)
    h2 = m2.fit(x, y, seed=0)
    np.testing.assert_array_equal(m1.encode_image(x), m2.encode_image(x))
    np.testing.assert_array_equal(m1.encode_text(y), m2.encode_text(y))
    assert [r["loss"] for r in h1] == [r["loss"] for r in h2]
    m3 = DJSRH(16, dict(FAST, epochs=1))
    m3.fit(x, y, seed=7)
    m4 = DJSRH(16, dict(FAST, epochs=1))
    m4.fit(x, y, seed=0)
    assert not np.array_equal(m3.encode_image(x), m4.encode_image(x))


def test_fit_does_not_touch_the_global_rng(toy_data):
    x, y, _ = toy_data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    DJSRH(4, dict(FAST, epochs=1)).fit(x, y, seed=0)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_codes_are_the_sign_of_the_network_outputs(toy_data, fitted):
    x, y, _ = toy_data
    m, _ = fitted
    with torch.no_grad():
        hx = m.img_net_(torch.from_numpy(x)).numpy()
        hy = m.txt_net_(torch.from_numpy(y)).numpy()
    np.testing.assert_array_equal(m.encode_image(x), (np.sign(hx) >= 0).astype(np.uint8))
    np.testing.assert_array_equal(m.encode_text(y), (np.sign(hy) >= 0).astype(np.uint8))
    assert 0.2 < m.encode_image(x).mean() < 0.8  # not a constant code


def test_state_round_trip(toy_data, fitted):
    x, y, _ = toy_data
    m, _ = fitted
    st = m.state()
    arrays = {k: v for k, v in st.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in st.items() if not isinstance(v, np.ndarray)}
    json.dumps(rest)  # everything else is JSON-able
    assert not any(isinstance(v, torch.Tensor) for v in st.values())
    assert arrays["img.0.weight"].shape == (16, x.shape[1])
    assert arrays["txt.0.weight"].shape == (64, y.shape[1]) and arrays["txt.2.weight"].shape == (16, 64)
    m2 = DJSRH.from_state(16, m.config, st)
    np.testing.assert_array_equal(m2.encode_image(x), m.encode_image(x))
    np.testing.assert_array_equal(m2.encode_text(y), m.encode_text(y))
    assert m2.config == m.config and m2.bits == 16


def test_standardize_and_mlp_head_round_trip(toy_data):
    x, y, _ = toy_data
    m = DJSRH(8, dict(FAST, epochs=2, standardize=True, img_hidden=16))
    m.fit(x + 5.0, y, seed=3)
    st = m.state()
    assert st["mean_x"] == pytest.approx((x + 5.0).mean(0), abs=1e-4)
    assert "img.2.weight" in st
    z = (x[:7] + 5.0 - st["mean_x"]) / st["std_x"]  # new rows use the training statistics
    with torch.no_grad():
        h = m.img_net_(torch.from_numpy(z.astype(np.float32))).numpy()
    np.testing.assert_array_equal(m.encode_image(x[:7] + 5.0), (h >= 0).astype(np.uint8))
    m2 = DJSRH.from_state(8, m.config, st)
    np.testing.assert_array_equal(m2.encode_image(x[:7] + 5.0), m.encode_image(x[:7] + 5.0))


def test_cos_rescale_auto_follows_the_sign_of_the_features(toy_data):
    x, y, _ = toy_data
    m = DJSRH(4, dict(FAST, epochs=1))
    m.fit(np.abs(x), y, seed=0)
    assert m.rescale_x_ is True and m.rescale_y_ is False
    m = DJSRH(4, dict(FAST, epochs=1, cos_rescale="always"))
    m.fit(x, y, seed=0)
    assert m.rescale_x_ is True and m.rescale_y_ is True


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("settings, match", [
    ({"lambda3": 1.0}, "unknown key.*lambda3"),
    ({"beta": 1.5}, "beta must be a finite number >= 0 and <= 1"),
    ({"batch_size": 1}, "batch_size must be an integer >= 2"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"mu": 0}, "mu must be a finite number > 0"),
    ({"alpha_schedule": "linear"}, "alpha_schedule must be one of"),
    ({"standardize": "yes"}, "standardize must be true or false"),
    ({"lr_txt": "fast"}, "lr_txt must be a finite number"),
])
def test_bad_settings(settings, match):
    with pytest.raises(PipelineError, match=match):
        DJSRH(16, settings)


def test_settings_merge_over_defaults_and_numeric_strings():
    m = DJSRH(16, {"lr_img": "1e-3", "beta": 0.6})
    assert m.config.lr_img == 0.001 and m.config.beta == 0.6 and m.config.eta == 0.4


def test_bad_inputs(toy_data, fitted):
    x, y, _ = toy_data
    m = DJSRH(8, FAST)
    with pytest.raises(PipelineError, match="bits must be"):
        DJSRH(0)
    with pytest.raises(PipelineError, match="200 image rows but 199 text rows"):
        m.fit(x, y[:-1])
    with pytest.raises(PipelineError, match="2-D"):
        m.fit(x[:, 0], y)
    bad = y.copy()
    bad[3, 2] = np.nan
    with pytest.raises(PipelineError, match="non-finite.*row 3, column 2"):
        m.fit(x, bad)
    with pytest.raises(PipelineError, match="batch_size 32 exceeds the 20"):
        m.fit(x[:20], y[:20])
    with pytest.raises(PipelineError, match="not fitted"):
        m.encode_image(x)
    fm, _ = fitted
    with pytest.raises(PipelineError, match="expected 16 columns"):
        fm.encode_image(x[:, :5])
    with pytest.raises(PipelineError, match="expected 24 columns"):
        fm.encode_text(x)
    assert fm.encode_text(y[:0]).shape == (0, 16)
    with pytest.raises(PipelineError, match="inconsistent state"):
        DJSRH.from_state(16, FAST, {"format": "other"})
    st = fm.state()
    del st["txt.2.bias"]
    with pytest.raises(PipelineError, match="inconsistent state"):
        DJSRH.from_state(16, FAST, st)
    with pytest.raises(PipelineError, match="unknown device"):
        DJSRH(8, FAST).fit(x, y, device="tpu")


def test_fused_sgd_trains_as_the_per_tensor_loop(toy_data):
    """optimizer_impl auto (fused SGD on a CPU) against loop (before issue 16): losses within 1e-4
    relative over 10 epochs; codes equal but for outputs within 1e-3 of the threshold."""
    x, y, _ = toy_data
    new, old = DJSRH(16, FAST), DJSRH(16, {**FAST, "optimizer_impl": "loop"})
    h_new, h_old = new.fit(x, y, seed=0), old.fit(x, y, seed=0)
    for a, b in zip(h_new, h_old, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert (new.encode_image(x) != old.encode_image(x)).mean() < 0.01
    assert (new.encode_text(y) != old.encode_text(y)).mean() < 0.01
