"""CMIMH (pipeline/methods/cmimh.py): its training loop, settings, determinism, NaN handling, model
files, diagnostics, and that it learns."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.methods import cmimh_losses as losses
from pipeline.methods.base import corr_mse, load_model, save_model, write_history
from pipeline.methods.cmimh import CMIMH

# the tiny 3-epoch runs below end near p = 1/2 on purpose (speed); their collapse warning is noise
pytestmark = pytest.mark.filterwarnings("ignore:cmimh training.*collapsed:RuntimeWarning")

CPU = torch.device("cpu")
SMALL = {"hidden": 32, "critic_hidden": 16, "critic_dim": 16, "disc_hidden": 16,
         "batch_size": 20, "epochs": 3}


def _data(n: int = 60, dx: int = 10, dy: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    z = r.normal(size=(n, 3))
    x = z @ r.normal(size=(3, dx)) + 0.3 * r.normal(size=(n, dx))
    y = z @ r.normal(size=(3, dy)) + 0.3 * r.normal(size=(n, dy))
    return x.astype(np.float32), y.astype(np.float32)


def train_cmimh(x, y, bits, settings, seed, device, log_csv=None, progress=False):
    """Fit CMIMH as the train stage does (and write its history CSV); return (model, history)."""
    model = CMIMH(bits, settings)
    hist = model.fit(x, y, seed=seed, device=device, progress=progress)
    if log_csv is not None:
        write_history(log_csv, hist)
    return model, hist


def diagnostics(model, x, y):
    return model.diagnostics(x, y, model.encode_image(x), model.encode_text(y))


def _train(x, y, settings=None, seed=0, **kw):
    return train_cmimh(x, y, 8, dict(SMALL, **(settings or {})), seed, CPU, progress=False, **kw)


# ------------------------------------------------------------------ history, determinism
def test_history_rows_and_csv(tmp_path):
    x, y = _data()
    log = tmp_path / "logs" / "train.csv"
    model, hist = _train(x, y, log_csv=log)
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert [r["step"] for r in hist] == [3, 6, 9]  # 60 rows / batch 20
    for r in hist:
        for k in ("loss", "rec", "mi", "kl", "tc", "bal", "disc", "conf", "seconds"):
            assert np.isfinite(r[k]), k
    assert not model.net_.training
    rows = list(csv.DictReader(log.open()))
    assert len(rows) == 3 and float(rows[-1]["loss"]) == pytest.approx(hist[-1]["loss"])
    assert not list(log.parent.glob(".*"))  # no temp file left behind


def test_switched_off_terms_log_none():
    x, y = _data()
    _, hist = _train(x, y, {"weights": {"mi": 0, "tc": 0}})
    assert hist[0]["mi"] is None and hist[0]["tc"] is None and hist[0]["disc"] is None
    assert np.isfinite(hist[0]["kl"])


def test_iterations_override_epochs():
    x, y = _data()
    _, hist = _train(x, y, {"iterations": 7, "epochs": 100})
    assert len(hist) == 3 and hist[-1]["step"] == 7


def test_same_seed_gives_identical_codes_other_seed_differs():
    x, y = _data()
    m1, h1 = _train(x, y, seed=5)
    m2, h2 = _train(x, y, seed=5)
    m3, _ = _train(x, y, seed=6)
    assert np.array_equal(m1.encode_image(x), m2.encode_image(x))
    assert np.array_equal(m1.encode_text(y), m2.encode_text(y))
    for a, b in zip(h1, h2):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    p1, p3 = m1.probs_image(x), m3.probs_image(x)
    assert not np.array_equal(p1, p3)


def test_fused_optimiser_trains_as_the_per_tensor_loop():
    """optimizer_impl auto (fused Adam on a CPU) against loop (torch's default before issue 16): the
    same losses within 1e-4 relative over the 3 epochs, the same probabilities within 1e-3, so
    the codes agree but for bits on the threshold. Not bitwise: the same update in another order."""
    x, y = _data()
    m_new, h_new = _train(x, y, seed=5)
    m_old, h_old = _train(x, y, {"optimizer_impl": "loop"}, seed=5)
    for a, b in zip(h_new, h_old, strict=True):
        for key, v in a.items():
            if key != "seconds" and isinstance(v, float):
                assert v == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    p_new, p_old = m_new.probs_image(x), m_old.probs_image(x)
    np.testing.assert_allclose(p_new, p_old, atol=1e-3)
    sure = np.abs(p_old - 0.5) > 1e-3  # bits not on the threshold
    assert np.array_equal(m_new.encode_image(x)[sure], m_old.encode_image(x)[sure])


def test_training_leaves_global_rng_alone():
    x, y = _data()
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    _train(x, y)
    assert torch.equal(torch.rand(3), want)


def test_callback_sees_every_epoch_and_changes_nothing():
    x, y = _data()
    seen = []

    def cb(epoch, net):
        seen.append((epoch, net.training))
        return {"val": float(epoch) * 2}

    m1, h1 = _train(x, y, seed=3)
    model = CMIMH(8, SMALL)
    h2 = model.fit(x, y, seed=3, callback=cb)
    assert [e for e, _ in seen] == [1, 2, 3]
    assert [r["val"] for r in h2] == [2.0, 4.0, 6.0]
    assert np.array_equal(m1.encode_image(x), model.encode_image(x))
    assert np.array_equal(m1.encode_text(y), model.encode_text(y))
    assert [r["loss"] for r in h1] == [r["loss"] for r in h2]


def test_cosine_schedule_decays_every_group_to_zero():
    import pipeline.methods.cmimh as cm

    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.Adam([{"params": params[:1], "lr": 1e-3}, {"params": params[1:2], "lr": 4e-3}])
    opt_d = torch.optim.Adam([{"params": params[2:], "lr": 2e-3}])
    c = cm.Config.from_dict({"lr_schedule": "cosine"}, "x")
    set_lr = cm._lr_schedule(c, 10, [opt, opt_d])
    set_lr(0)
    assert [g["lr"] for g in opt.param_groups + opt_d.param_groups] == pytest.approx([1e-3, 4e-3, 2e-3])
    set_lr(5)
    assert [g["lr"] for g in opt.param_groups + opt_d.param_groups] == pytest.approx([5e-4, 2e-3, 1e-3])
    set_lr(10)
    assert [g["lr"] for g in opt.param_groups + opt_d.param_groups] == pytest.approx([0, 0, 0], abs=1e-12)
    constant = cm._lr_schedule(cm.Config(), 10, [opt])
    opt.param_groups[0]["lr"] = 1e-3
    constant(7)
    assert opt.param_groups[0]["lr"] == 1e-3


def test_cosine_schedule_and_kl_warmup_change_training_and_defaults_do_not():
    x, y = _data()
    base, _ = _train(x, y, seed=4)
    same, _ = _train(x, y, {"lr_schedule": "constant", "kl_warmup": 0, "rec_norm": "sum", "dropout": 0.0}, seed=4)
    assert np.array_equal(base.probs_image(x), same.probs_image(x))
    for extra in ({"lr_schedule": "cosine"}, {"kl_warmup": 5}, {"rec_norm": "mean"}, {"dropout": 0.3}):
        other, hist = _train(x, y, extra, seed=4)
        assert not np.allclose(base.probs_image(x), other.probs_image(x)), extra
        assert np.isfinite(hist[-1]["loss"])


def test_kl_warmup_scales_the_kl_weight_in_the_loss(monkeypatch):
    import pipeline.methods.cmimh as cm

    x, y = _data()
    seen = []
    real = cm._step

    def spy(*a, **kw):
        seen.append(kw.get("kl_scale", 1.0))
        return real(*a, **kw)

    monkeypatch.setattr(cm, "_step", spy)
    _train(x, y, {"kl_warmup": 4})  # 3 steps per epoch, 9 steps
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1])
    # the loss is rec - mi + kl_scale * w_kl * kl + ...: at scale 0 the KL term drops out
    torch.manual_seed(0)
    net = cm.make_networks(10, 7, 8, SMALL)
    opt, opt_d = cm._optimizers(net, cm.Config.from_dict(SMALL, "x"))
    xb, yb = torch.from_numpy(x[:20]), torch.from_numpy(y[:20])
    c = cm.Config.from_dict(dict(SMALL, weights={"tc": 0, "mi": 0, "rec": 0, "bal": 0, "kl": 2.0}), "x")
    net = cm.make_networks(10, 7, 8, c)
    opt, opt_d = cm._optimizers(net, c)
    v = real(net, xb, yb, c, torch.Generator().manual_seed(0), opt, opt_d, 1, 1, kl_scale=0.25)
    assert v["loss"] == pytest.approx(0.25 * 2.0 * v["kl"], rel=1e-5)


def test_critic_on_samples_runs():
    x, y = _data()
    _, hist = _train(x, y, {"critic_input": "samples", "critic_samples": 3, "optimizer": "adam",
                            "lr": 1e-3, "lr_decoder": 1e-3})
    assert np.isfinite(hist[-1]["mi"])


# ------------------------------------------------------------------ errors
def test_nan_in_a_loss_term_raises_naming_it(monkeypatch):
    x, y = _data()
    monkeypatch.setattr(losses, "sym_bernoulli_kl", lambda p, q, eps=1e-6: torch.tensor(float("nan")))
    with pytest.raises(PipelineError, match=r"'kl' is nan at epoch 1 step 1"):
        _train(x, y)


def test_inf_after_some_steps_reports_where(monkeypatch):
    x, y = _data()
    real = losses.balance
    calls = {"n": 0}

    def flaky(p):
        calls["n"] += 1  # called twice per step (image, text)
        return real(p) + (float("inf") if calls["n"] > 8 else 0.0)

    monkeypatch.setattr(losses, "balance", flaky)
    with pytest.raises(PipelineError, match=r"'bal' is inf at epoch 2 step 5"):
        _train(x, y)


@pytest.mark.parametrize("mutate, match", [
    (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), y), "non-finite"),
    (lambda x, y: (x, np.where(np.arange(y.size).reshape(y.shape) == 3, np.inf, y)), "non-finite"),
    (lambda x, y: (x[:-1], y), "rows"),
    (lambda x, y: (x[:, 0], y), "2-D"),
    (lambda x, y: (x.astype(str), y), "real numbers"),
    (lambda x, y: (x[:10], y[:10]), "batch_size 20 exceeds"),
])
def test_bad_inputs_raise(mutate, match):
    x, y = _data()
    with pytest.raises(PipelineError, match=match) as e:
        _train(*mutate(x, y))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("settings, match", [
    ({"weights": {"tc": -1}}, "weights.tc"),
    ({"batch_size": 1}, "batch_size"),
    ({"typo": 3}, "unknown key"),
    ({"weights": {"rec": 0, "mi": 0, "kl": 0, "tc": 0, "bal": 0}}, "all loss weights are 0"),
])
def test_bad_settings_raise(settings, match):
    x, y = _data()
    with pytest.raises(PipelineError, match=match):
        _train(x, y, settings)


def test_bad_bits_raise():
    x, y = _data()
    with pytest.raises(PipelineError, match="bits"):
        train_cmimh(x, y, 0, SMALL, 0, CPU, progress=False)


# ------------------------------------------------------------------ model files
def test_save_load_round_trip(tmp_path):
    x, y = _data()
    model, _ = _train(x, y)
    path = tmp_path / "m" / "cmimh.pt"
    save_model(path, model, {"dataset": "unit", "seed": 0, "arr": np.arange(2)})
    loaded, meta = load_model(path, CPU)
    assert meta == {"dataset": "unit", "seed": 0, "arr": [0, 1]}
    assert not loaded.net_.training and loaded.bits == 8 and isinstance(loaded, CMIMH)
    assert np.array_equal(loaded.encode_image(x), model.encode_image(x))
    assert np.array_equal(loaded.encode_text(y), model.encode_text(y))
    assert not list(path.parent.glob(".*"))


def test_load_missing_or_corrupt(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        load_model(tmp_path / "nope.pt", CPU)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(PipelineError, match="cannot read model file") as e:
        load_model(bad, CPU)
    assert "\n" not in str(e.value)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(PipelineError, match="not a model file of this version"):
        load_model(other, CPU)


# ------------------------------------------------------------------ diagnostics
def test_corr_mse_hand_made_codes():
    indep = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.uint8)  # exactly uncorrelated bits
    assert corr_mse(indep) == pytest.approx(0.0)
    dup = np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.uint8)  # C = [[1,1],[1,1]]
    assert corr_mse(dup) == pytest.approx(2 / 4)
    anti = np.array([[0, 1], [1, 0], [1, 0], [0, 1]], np.uint8)  # C off-diagonal -1
    assert corr_mse(anti) == pytest.approx(2 / 4)
    const = np.array([[0, 1, 1], [1, 1, 0], [1, 1, 0], [0, 1, 1]], np.uint8)  # bit 1 constant
    # bits 0 and 2 anti-correlated (2 entries of 1), constant bit adds 0; 9 entries
    assert corr_mse(const) == pytest.approx(2 / 9)
    pm = 2.0 * dup - 1  # +-1 form gives the same value
    assert corr_mse(pm) == pytest.approx(2 / 4)


def test_corr_mse_matches_numpy_corrcoef():
    b = (np.random.default_rng(0).random((300, 6)) < 0.4).astype(np.uint8)
    b[:, 5] = b[:, 0] ^ (np.random.default_rng(1).random(300) < 0.1)
    c = np.corrcoef((2.0 * b - 1).T)
    assert corr_mse(b) == pytest.approx(np.mean((c - np.eye(6)) ** 2), rel=1e-9)


def test_diagnostics_keys_and_tc_null_without_discriminators():
    x, y = _data()
    model, _ = _train(x, y)
    d = diagnostics(model, x, y)
    assert set(d) == {"corr_mse_image", "corr_mse_text", "tc_image", "tc_text"}
    assert all(np.isfinite(v) for v in d.values())
    assert d["corr_mse_image"] == pytest.approx(corr_mse(model.encode_image(x)))
    with torch.no_grad():
        want = model.net_.disc_y(torch.from_numpy(model.probs_text(y))).mean().item()
    assert d["tc_text"] == pytest.approx(want, rel=1e-5)
    model0, _ = _train(x, y, {"weights": {"tc": 0}})
    d0 = diagnostics(model0, x, y)
    assert d0["tc_image"] is None and d0["tc_text"] is None


# ------------------------------------------------------------------ learning sanity
def _clusters(n: int, seed: int, k: int = 8):
    """Two noisy views of a shared cluster latent: x = A z + noise, y = B z + noise."""
    r = np.random.default_rng(100)  # same cluster centres / projections for train and query
    centres = 2.0 * r.normal(size=(k, 16))
    a, b = r.normal(size=(16, 64)), r.normal(size=(16, 48))
    q = np.random.default_rng(seed)
    c = q.integers(0, k, n)
    z = centres[c] + q.normal(size=(n, 16))
    x = z @ a + 2.0 * q.normal(size=(n, 64))
    y = z @ b + 2.0 * q.normal(size=(n, 48))
    return x.astype(np.float32), y.astype(np.float32), c


def _map_at(q: np.ndarray, db: np.ndarray, lq: np.ndarray, ldb: np.ndarray, k: int = 100) -> float:
    ham = (q[:, None, :] != db[None, :, :]).sum(-1)
    aps = []
    for i in range(len(q)):
        order = np.argsort(ham[i], kind="stable")[:k]
        rel = (ldb[order] == lq[i]).astype(float)
        if rel.sum() == 0:
            aps.append(0.0)
            continue
        prec = np.cumsum(rel) / np.arange(1, k + 1)
        aps.append(float((prec * rel).sum() / rel.sum()))
    return float(np.mean(aps))


def test_learns_cross_modal_codes_on_synthetic_clusters():
    x, y, c = _clusters(600, seed=1)
    xq, yq, cq = _clusters(200, seed=2)
    settings = {"hidden": 128, "critic_hidden": 64, "critic_dim": 64, "disc_hidden": 64,
                "batch_size": 50, "epochs": 40}
    model, hist = train_cmimh(x, y, 16, settings, 0, CPU, progress=False)
    i2t = _map_at(model.encode_image(xq), model.encode_text(y), cq, c)
    t2i = _map_at(model.encode_text(yq), model.encode_image(x), cq, c)
    r = np.random.default_rng(0)
    rand = _map_at(r.integers(0, 2, (200, 16)), r.integers(0, 2, (600, 16)), cq, c)
    assert rand < 0.25
    assert i2t > 0.5 and t2i > 0.5, (i2t, t2i, rand, hist[-1])
    assert hist[-1]["mi"] > hist[0]["mi"]  # the critic found signal


def test_collapsed_run_warns(monkeypatch):
    import pipeline.methods.cmimh as train_mod

    x, y = _data()
    monkeypatch.setattr(train_mod, "COLLAPSE_CONF", 1.01)  # every run counts as collapsed
    with pytest.warns(RuntimeWarning, match=r"collapsed.*reconstruction \([0-9.]+\) outweighs MI and KL \(high-dimensional features\) try rec_norm: mean"):
        _train(x, y, {"iterations": 1})


def test_encoding_a_model_in_eval_mode_never_toggles_modes(monkeypatch):
    """A trained (and a served) model is in eval mode: encoding sets no module's mode (no walk over
    the networks in Python, no mode flipped under a concurrent encoder thread), and gives the codes
    it gave before; a model put back in training mode is encoded in eval mode and left training."""
    import torch

    x, y = _data()
    m, _ = _train(x, y)
    ref_i, ref_t = m.encode_image(x), m.encode_text(y)
    assert not any(sub.training for sub in m.net_.modules())
    real_train = torch.nn.Module.train

    def refuse(self, mode=True):
        raise AssertionError("Module.train called while encoding")

    monkeypatch.setattr(torch.nn.Module, "train", refuse)
    assert np.array_equal(m.encode_image(x), ref_i) and np.array_equal(m.encode_text(y), ref_t)
    monkeypatch.setattr(torch.nn.Module, "train", real_train)
    m.net_.train()
    assert np.array_equal(m.encode_text(y), ref_t)
    assert all(sub.training for sub in m.net_.modules())
