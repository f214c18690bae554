"""CMFH (Ding et al., CVPR 2014 / TIP 2016): the closed-form block updates (stationarity, checked
with gradients written here), the monotone objective computed independently, exact recovery of
low-rank data, cross-modal code agreement, thresholding, state and errors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.methods import cmfh
from pipeline.errors import PipelineError

LAM, MU, GAMMA = 0.5, 100.0, 0.01


def _objective(x1, x2, f, lam=LAM, mu=MU, gamma=GAMMA) -> float:
    """Eq. CMFH written out directly (Frobenius norms, squared)."""
    fro2 = lambda a: np.linalg.norm(a, "fro") ** 2  # noqa: E731
    return (lam * fro2(x1 - f["U1"] @ f["V"]) + (1 - lam) * fro2(x2 - f["U2"] @ f["V"])
            + mu * (fro2(f["V"] - f["P1"] @ x1) + fro2(f["V"] - f["P2"] @ x2))
            + gamma * sum(fro2(f[k]) for k in ("U1", "U2", "P1", "P2", "V")))


def _latent_cols(n=400, k=3, seed=0, nuisance=0.3):
    """Centred column-sample views sharing k sources: X1 = A [s; e1], X2 = B [s; e2]."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((k, n))
    x1 = rng.standard_normal((7, k + 2)) @ np.vstack([s, nuisance * rng.standard_normal((2, n))])
    x2 = rng.standard_normal((5, k + 1)) @ np.vstack([s, nuisance * rng.standard_normal((1, n))])
    return x1 - x1.mean(1, keepdims=True), x2 - x2.mean(1, keepdims=True)


def _run(x1, x2, k, iters, gamma=GAMMA, seed=0):
    snaps: list[dict] = []
    f, hist = cmfh.solve_cmfh(x1, x2, k, LAM, MU, gamma, iters, 0.0, np.random.default_rng(seed),
                              callback=lambda t, fs: snaps.append({key: v.copy() for key, v in fs.items()}))
    return f, hist, snaps


def test_objective_non_increasing_computed_independently():
    x1, x2 = _latent_cols()
    f, hist, snaps = _run(x1, x2, 3, 30)
    obj = np.array([_objective(x1, x2, s) for s in snaps])
    assert len(obj) == 30
    assert np.all(np.diff(obj) <= 1e-9 * obj[0])
    assert obj[-1] < 0.5 * obj[0]
    # the history's Gram-matrix objective is the same number
    np.testing.assert_allclose([h["objective"] for h in hist], obj, rtol=1e-8)
    assert all(h["epoch"] == t for t, h in enumerate(hist, 1))


def test_each_update_is_the_exact_block_minimiser():
    """Zero gradient of eq. CMFH in each block at the value the update produced.

    Order within iteration t: U from V_{t-1}; V from U_t and P_{t-1}; P from V_t.
    """
    x1, x2 = _latent_cols(n=150, seed=1)
    _, _, snaps = _run(x1, x2, 3, 4)
    prev, cur = snaps[2], snaps[3]
    u1, u2, v, p1, p2 = cur["U1"], cur["U2"], cur["V"], cur["P1"], cur["P2"]
    scale = np.abs(x1).max() ** 2 * x1.shape[1]
    # dJ/dU1 at (U1_t, V_{t-1})
    g_u1 = -2 * LAM * (x1 - u1 @ prev["V"]) @ prev["V"].T + 2 * GAMMA * u1
    g_u2 = -2 * (1 - LAM) * (x2 - u2 @ prev["V"]) @ prev["V"].T + 2 * GAMMA * u2
    # dJ/dV at (U_t, V_t, P_{t-1})
    g_v = (-2 * LAM * u1.T @ (x1 - u1 @ v) - 2 * (1 - LAM) * u2.T @ (x2 - u2 @ v)
           + 2 * MU * (v - prev["P1"] @ x1) + 2 * MU * (v - prev["P2"] @ x2) + 2 * GAMMA * v)
    # dJ/dP1 at (V_t, P_t)
    g_p1 = -2 * MU * (v - p1 @ x1) @ x1.T + 2 * GAMMA * p1
    g_p2 = -2 * MU * (v - p2 @ x2) @ x2.T + 2 * GAMMA * p2
    for g in (g_u1, g_u2, g_v, g_p1, g_p2):
        assert np.abs(g).max() < 1e-8 * scale


def test_exact_low_rank_data_is_reconstructed():
    rng = np.random.default_rng(2)
    k, n = 3, 300
    v0 = rng.standard_normal((k, n))
    v0 -= v0.mean(1, keepdims=True)
    x1, x2 = rng.standard_normal((8, k)) @ v0, rng.standard_normal((6, k)) @ v0
    f, hist, _ = _run(x1, x2, k, 20, gamma=1e-6)
    for x, u in ((x1, f["U1"]), (x2, f["U2"])):
        assert np.linalg.norm(x - u @ f["V"]) ** 2 / np.linalg.norm(x) ** 2 < 1e-10
    # the hash projections reproduce V exactly too (V lies in the row space of both views)
    for x, p in ((x1, f["P1"]), (x2, f["P2"])):
        assert np.linalg.norm(f["V"] - p @ x) ** 2 / np.linalg.norm(f["V"]) ** 2 < 1e-8
    # with the default gamma the error is small but visibly gamma-limited
    f2, _, _ = _run(x1, x2, k, 20)
    err2 = np.linalg.norm(x1 - f2["U1"] @ f2["V"]) ** 2 / np.linalg.norm(x1) ** 2
    assert 1e-10 < err2 < 1e-4


def test_latent_source_pairs_get_agreeing_codes_and_codes_threshold_the_centred_projection():
    rng = np.random.default_rng(3)
    n, k = 800, 3
    s = rng.standard_normal((n, k))
    x = np.hstack([s, 0.3 * rng.standard_normal((n, 2))]) @ rng.standard_normal((k + 2, 7)) + 4.0
    y = np.hstack([s, 0.3 * rng.standard_normal((n, 1))]) @ rng.standard_normal((k + 1, 5)) - 2.0
    m = cmfh.CMFH(k)
    hist = m.fit(x, y)
    bx, by = m.encode_image(x), m.encode_text(y)
    assert (bx == by).mean() > 0.97
    assert (bx == by).all(axis=1).mean() > 0.9
    assert 0.3 < bx.mean() < 0.7
    # codes: 1[P_m (v - mean_train) >= 0], from the returned factors
    f = m.factors
    np.testing.assert_array_equal(bx, ((x - x.mean(0)) @ f["P1"].T >= 0).astype(np.uint8))
    np.testing.assert_array_equal(by, ((y - y.mean(0)) @ f["P2"].T >= 0).astype(np.uint8))
    # the training projections have zero mean: the threshold is their training mean
    np.testing.assert_allclose(((x - m.mean_x_) @ m.w_x_).mean(0), 0, atol=1e-8)
    # centring learned in fit: shifting the features changes nothing but the stored means
    m2 = cmfh.CMFH(k)
    m2.fit(x + 50.0, y - 7.0)
    np.testing.assert_allclose(m2.w_x_, m.w_x_, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(m2.encode_image(x + 50.0), bx)
    assert 1 <= len(hist) <= cmfh.Config().to_dict()["max_iter"]
    objs = [h["objective"] for h in hist]
    assert len(hist) == cmfh.Config().to_dict()["max_iter"] or (objs[-2] - objs[-1]) <= cmfh.Config().to_dict()["tol"] * objs[-2]


def test_stopping_rule_tolerance_and_max_iter():
    x1, x2 = _latent_cols(n=120, seed=4)
    _, h = cmfh.solve_cmfh(x1, x2, 2, LAM, MU, GAMMA, 7, 0.0, np.random.default_rng(0))
    assert len(h) == 7
    _, h = cmfh.solve_cmfh(x1, x2, 2, LAM, MU, GAMMA, 500, 1e-3, np.random.default_rng(0))
    objs = [r["objective"] for r in h]
    assert len(h) < 500 and (objs[-2] - objs[-1]) <= 1e-3 * objs[-2]
    assert all((a - b) > 1e-3 * a for a, b in zip(objs[:-2], objs[1:-1]))   # did not stop earlier


def test_determinism_seed_state_round_trip():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((120, 6)), rng.standard_normal((120, 4))
    y[:, :2] += x[:, :2]
    a, b, c = cmfh.CMFH(4), cmfh.CMFH(4), cmfh.CMFH(4)
    a.fit(x, y, seed=7)
    b.fit(x, y, seed=7)
    c.fit(x, y, seed=8)
    assert np.array_equal(a.encode_image(x), b.encode_image(x))
    assert np.array_equal(a.w_y_, b.w_y_) and not np.allclose(a.w_y_, c.w_y_)
    codes = a.encode_image(x[:3])
    assert codes.dtype == np.uint8 and codes.shape == (3, 4) and set(np.unique(codes)) <= {0, 1}
    st = a.state()
    assert a.config.to_dict()["mu"] == 100.0 and "V" not in st
    r = cmfh.CMFH.from_state(4, a.config, st)
    assert np.array_equal(r.encode_image(x), a.encode_image(x))
    assert np.array_equal(r.encode_text(y), a.encode_text(y))


@pytest.mark.parametrize("settings, match", [
    ({"alpha": 1}, "unknown key.*alpha"),
    ({"lambda": 1.0}, r"lambda must be a finite number > 0 and < 1"),
    ({"lambda": 0}, "lambda must be a finite number > 0"),
    ({"gamma": 0}, "gamma must be a finite number > 0"),
    ({"mu": -2}, "mu must be"),
    ({"max_iter": 0}, "max_iter must be an integer >= 1"),
    ({"tol": -1e-3}, "tol must be"),
])
def test_bad_settings_are_one_line_errors(settings, match):
    with pytest.raises(PipelineError, match=match) as e:
        cmfh.CMFH(2, settings)
    assert "\n" not in str(e.value)


def test_bad_inputs_are_one_line_errors():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 4))
    m = cmfh.CMFH(2, {"max_iter": 3})
    m.fit(x, y)
    cases = [
        (lambda: cmfh.CMFH(2).fit(x, y[:10]), "row counts differ"),
        (lambda: cmfh.CMFH(2).fit(x[None], y), "expected a 2-D"),
        (lambda: m.encode_text(x), "encode_text: expected 4 columns"),
        (lambda: m.encode_image(np.where(np.arange(9000)[:, None] == 8500, np.inf, np.zeros((9000, 5)))),
         "encode_image: NaN/inf in 1 rows.*first at row 8500"),     # found in the second block
        (lambda: cmfh.CMFH(2).fit(x, y, seed="a"), "seed must be an integer"),
    ]
    for fn, match in cases:
        with pytest.raises(PipelineError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)
