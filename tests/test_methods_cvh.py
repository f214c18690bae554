"""CVH (Kumar & Udupa 2011) with W = I: the generalised eigenproblem, its constraints, codes,
plus the shared LinearHash interface (settings, validation, state round trip)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.methods import cvh
from pipeline.errors import PipelineError


def _latent(n: int = 1500, k: int = 3, seed: int = 0, noise_x: int = 3, noise_y: int = 2):
    """x = A [s, n_x], y = B [s, n_y]: k shared sources, independent nuisance dims (noise-free maps)."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, k))
    a = rng.standard_normal((k + noise_x, k + noise_x))   # invertible: full-rank covariances
    b = rng.standard_normal((k + noise_y, k + noise_y))
    x = np.hstack([s, rng.standard_normal((n, noise_x))]) @ a
    y = np.hstack([s, rng.standard_normal((n, noise_y))]) @ b
    return x, y


def _with_covariance(sigma: np.ndarray, n: int = 400, seed: int = 0) -> np.ndarray:
    """n rows whose (1/n, centred) sample covariance is exactly ``sigma``."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(sigma)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / n)).T  # sample covariance exactly I
    return z @ np.linalg.cholesky(sigma).T + 5.0               # a shift: fit must centre


# Hand example: C_xx = diag(1, 4), C_yy = I, C_xy = diag(0.8, 1). Canonical pairs are the
# coordinate axes with rho_1 = 0.8 / sqrt(1 * 1) = 0.8 and rho_2 = 1 / sqrt(4 * 1) = 0.5, so
# eq. CVH has eigenvalues 1 - rho = 0.2, 0.5 (and 1 + rho = 1.5, 1.8). Eigenvectors, B-normed:
#   lambda = 0.2: a_x = (a, 0), a_y = (b, 0): a - 0.8 b = 0.2 a -> a = b; a^2 + b^2 = 1 -> 1/sqrt2
#   lambda = 0.5: a_x = (0, c), a_y = (0, e): 4c - e = 0.5 * 4c -> e = 2c; 4c^2 + e^2 = 1
#                 -> c = 1/(2 sqrt2), e = 1/sqrt2
CXX, CYY, CXY = np.diag([1.0, 4.0]), np.eye(2), np.diag([0.8, 1.0])
R2 = 1 / math.sqrt(2)


def test_generalised_eigenproblem_matches_hand_computed_2d_example():
    ev, ax, ay = cvh.cvh_directions(CXX, CYY, CXY, 2)
    np.testing.assert_allclose(ev, [0.2, 0.5], atol=1e-12)
    ax, ay = cvh.fix_signs(ax, ay)
    np.testing.assert_allclose(ax, [[R2, 0], [0, R2 / 2]], atol=1e-12)
    np.testing.assert_allclose(ay, [[R2, 0], [0, R2]], atol=1e-12)
    ev1, _, _ = cvh.cvh_directions(CXX, CYY, CXY, 1)
    np.testing.assert_allclose(ev1, [0.2], atol=1e-12)


def test_fit_on_data_with_that_covariance_gives_the_hand_solution():
    sigma = np.block([[CXX, CXY], [CXY.T, CYY]])
    d = _with_covariance(sigma)
    m = cvh.CVH(2, {"reg": 0.0})
    hist = m.fit(d[:, :2], d[:, 2:])
    np.testing.assert_allclose(m.eigenvalues_, [0.2, 0.5], atol=1e-9)
    np.testing.assert_allclose([h["correlation"] for h in hist], [0.8, 0.5], atol=1e-9)
    # scaled by sqrt 2: each view's projections have identity covariance
    np.testing.assert_allclose(m.w_x_, [[1, 0], [0, 0.5]], atol=1e-9)
    np.testing.assert_allclose(m.w_y_, [[1, 0], [0, 1]], atol=1e-9)
    np.testing.assert_allclose(m.mean_x_, [5, 5], atol=1e-9)


def test_constraint_projected_training_data_has_identity_covariance():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 7)) @ rng.standard_normal((7, 7))
    y = x[:, :5] @ rng.standard_normal((5, 6)) + rng.standard_normal((600, 6))
    reg = 1e-3
    m = cvh.CVH(4, {"reg": reg})
    m.fit(x, y)
    for v, w, mean in ((x, m.w_x_, m.mean_x_), (y, m.w_y_, m.mean_y_)):
        vc = v - v.mean(0)
        c = vc.T @ vc / len(v)
        c_reg = c + reg * np.trace(c) / len(c) * np.eye(len(c))
        np.testing.assert_allclose(w.T @ c_reg @ w, np.eye(4), atol=1e-9)      # exact, regularised
        p = vc @ w
        np.testing.assert_allclose(p.T @ p / len(v), np.eye(4), atol=0.02)     # ~ identity, uncorrelated
        np.testing.assert_allclose(mean, v.mean(0))


def test_latent_source_pairs_get_identical_codes_and_correlations_match_whitened_svd():
    x, y = _latent()
    k = min(x.shape[1], y.shape[1])
    m = cvh.CVH(k, {"reg": 0.0})
    hist = m.fit(x, y)
    rho = np.array([h["correlation"] for h in hist])
    # independent: singular values of C_xx^{-1/2} C_xy C_yy^{-1/2} (eigh-based inverse square roots)
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = len(x)

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w ** -0.5) @ v.T

    sv = np.linalg.svd(inv_sqrt(xc.T @ xc / n) @ (xc.T @ yc / n) @ inv_sqrt(yc.T @ yc / n), compute_uv=False)
    np.testing.assert_allclose(rho, sv[:k], atol=1e-7)
    assert np.all(rho[:3] > 1 - 1e-9)          # the three shared sources
    assert np.all(np.abs(rho[3:]) < 0.15)      # pure-noise directions: sampling-level correlation
    m3 = cvh.CVH(3, {"reg": 0.0})
    m3.fit(x, y)
    assert np.array_equal(m3.encode_image(x), m3.encode_text(y))  # every pair: the same code
    mdef = cvh.CVH(3, {"reg": 1e-4})                            # a small ridge: near-identical
    mdef.fit(x, y)
    assert (mdef.encode_image(x) == mdef.encode_text(y)).mean() > 0.99


def test_codes_dtype_shape_determinism_and_state_round_trip():
    x, y = _latent(n=300, seed=5)
    a, b = cvh.CVH(3), cvh.CVH(3)
    a.fit(x, y, seed=1)
    b.fit(x.copy(), y.copy(), seed=1)
    ci = a.encode_image(x[:17])
    assert ci.dtype == np.uint8 and ci.shape == (17, 3) and set(np.unique(ci)) <= {0, 1}
    assert np.array_equal(ci, b.encode_image(x[:17]))
    st = a.state()
    # what a model file does to a state: arrays stay arrays, the rest JSON-like
    st2 = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in st.items()}
    r = cvh.CVH.from_state(3, a.config, st2)
    assert np.array_equal(r.encode_image(x), a.encode_image(x))
    assert np.array_equal(r.encode_text(y), a.encode_text(y))
    assert r.config.to_dict() == a.config.to_dict() and r.bits == 3
    np.testing.assert_array_equal(r.eigenvalues_, a.eigenvalues_)
    assert a.encode_text(y[:0]).shape == (0, 3)
    # 5 rows vs all rows: another GEMM shape, so the projections agree to rounding and the codes
    # wherever the projection is not within that rounding of 0
    x32 = x.astype(np.float32)
    proj = (x32.astype(np.float64) - a.mean_x_) @ a.w_x_
    sure = np.abs(proj[:5]) > 1e-9
    assert np.array_equal(a.encode_image(x32)[:5][sure], a.encode_image(x32[:5])[sure])


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("settings, match", [
    ({"regg": 1}, "unknown key.*regg"),
    ({"reg": -1}, "reg must be a finite number >= 0"),
    ({"reg": "abc"}, "reg must be"),
    ({"reg": float("nan")}, "reg must be"),
    ([1, 2], "must be a mapping"),
])
def test_bad_settings_are_one_line_errors(settings, match):
    with pytest.raises(PipelineError, match=match) as e:
        cvh.CVH(2, settings)
    _one_line(e)


def test_settings_merge_over_defaults_and_numeric_strings():
    assert cvh.CVH(2).config.to_dict() == cvh.Config().to_dict()
    assert cvh.CVH(2, {"reg": "1e-3"}).config.to_dict()["reg"] == 1e-3


def test_bad_inputs_are_one_line_errors():
    x, y = _latent(n=50)
    cases = [
        (lambda: cvh.CVH(0), "bits must be an integer >= 1"),
        (lambda: cvh.CVH(2.5), "bits must be an integer"),
        (lambda: cvh.CVH(2).fit(x[:, 0], y), "image features: expected a 2-D"),
        (lambda: cvh.CVH(2).fit(x, y[:-1]), "row counts differ"),
        (lambda: cvh.CVH(2).fit(np.where(np.arange(50)[:, None] == 7, np.nan, x), y), "NaN/inf in 1 rows.*row 7"),
        (lambda: cvh.CVH(2).fit(x[:1], y[:1]), "at least 2 training pairs"),
        (lambda: cvh.CVH(9).fit(x, y), r"bits \(9\) must be at most min\(d_x, d_y\)"),
        (lambda: cvh.CVH(2).fit(np.ones_like(x), y), "constant"),
        (lambda: cvh.CVH(2).encode_image(x), "not fitted"),
        (lambda: cvh.CVH.from_state(2, {}, {"mean_x": [0.0]}), "missing 'w_x'"),
    ]
    for fn, match in cases:
        with pytest.raises(PipelineError, match=match) as e:
            fn()
        _one_line(e)
    m = cvh.CVH(2)
    m.fit(x, y)
    with pytest.raises(PipelineError, match="expected 6 columns") as e:
        m.encode_image(x[:, :5])
    _one_line(e)
    st = m.state()
    st["w_x"] = st["w_x"][:, :1]
    with pytest.raises(PipelineError, match="w_x has shape") as e:
        cvh.CVH.from_state(2, {}, st)
    _one_line(e)
