"""ACQ (Irie et al., ICCV 2015): the exact code step (brute force), the monotone co-quantisation
objective computed independently, shared binary sources recovered with identical codes per pair,
cluster retrieval far above random codes, determinism, state and one-line errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.eval.codes import pack_bits
from pipeline.eval.metrics import map_at_k
from pipeline.methods import acq, ccaitq

from hashing_problems import binary_sources, clusters, mean_ap


def _signed_permutation(b, b0) -> bool:
    m = b.T @ b0 / len(b0)
    perm = np.argmax(np.abs(m), axis=1)
    if sorted(perm) != list(range(b0.shape[1])):
        return False
    return bool(np.array_equal(b, b0[:, perm] * np.sign(m[np.arange(len(perm)), perm])))


def _q(vx, vy, f, lam):
    """Eq. ACQ written out."""
    fro2 = lambda a: float((a * a).sum())  # noqa: E731
    return fro2(f["B_x"] - vx @ f["R_x"]) + fro2(f["B_y"] - vy @ f["R_y"]) + lam * fro2(f["B_x"] - f["B_y"])


# ----------------------------------------------------------------------------------- the solver
def test_code_step_is_the_exact_minimiser_over_the_four_sign_pairs():
    rng = np.random.default_rng(0)
    zx, zy = rng.standard_normal((50, 4)) * 1.5, rng.standard_normal((50, 4)) * 1.5
    for lam in (0.0, 0.2, 0.7, 3.0):
        bx, by = acq.code_step(zx, zy, lam)
        cost = lambda a, b: (a - zx) ** 2 + (b - zy) ** 2 + lam * (a - b) ** 2  # noqa: E731
        best = np.min([cost(a, b) for a, b in itertools.product((-1.0, 1.0), repeat=2)], axis=0)
        np.testing.assert_allclose(cost(bx, by), best, atol=1e-12)
        assert set(np.unique(bx)) <= {-1.0, 1.0} and set(np.unique(by)) <= {-1.0, 1.0}
    # lambda 0: each modality its own sign; lambda >= max|z|: shared codes sgn(z_x + z_y)
    bx, by = acq.code_step(zx, zy, 0.0)
    np.testing.assert_array_equal(bx, np.where(zx >= 0, 1.0, -1.0))
    np.testing.assert_array_equal(by, np.where(zy >= 0, 1.0, -1.0))
    bx, by = acq.code_step(zx, zy, float(np.abs(np.r_[zx.ravel(), zy.ravel()]).max()))
    np.testing.assert_array_equal(bx, by)
    np.testing.assert_array_equal(bx, np.where(zx + zy >= 0, 1.0, -1.0))


def test_objective_never_increases_computed_independently_and_rotations_stay_orthogonal():
    rng = np.random.default_rng(1)
    vx = rng.standard_normal((300, 5)) @ np.diag([2, 1.5, 1, 0.7, 0.4])
    vy = vx @ ccaitq.random_rotation(5, rng) * 0.8 + 0.5 * rng.standard_normal((300, 5))
    for lam in (0.0, 0.3, 2.0):
        snaps = []
        f, hist = acq.co_quantize(vx, vy, lam, 25, np.random.default_rng(3),
                                  callback=lambda t, s: snaps.append({k: v.copy() for k, v in s.items()}))
        q = np.array([_q(vx, vy, s, lam) for s in snaps])
        assert len(q) == 25 and [h["epoch"] for h in hist] == list(range(26))
        np.testing.assert_allclose([h["objective"] for h in hist[1:]], q, rtol=1e-12)
        assert np.all(np.diff([h["objective"] for h in hist]) <= 1e-9 * hist[0]["objective"])
        assert hist[-1]["objective"] < hist[0]["objective"]
        for s in snaps[:3] + snaps[-1:]:
            for r in (s["R_x"], s["R_y"]):
                np.testing.assert_allclose(r.T @ r, np.eye(5), atol=1e-10)
        # each rotation is the Procrustes minimiser for its codes: no orthogonal R does better
        for v, r, b in ((vx, f["R_x"], f["B_x"]), (vy, f["R_y"], f["B_y"])):
            best = ((b - v @ r) ** 2).sum()
            for seed in range(5):
                other = ccaitq.random_rotation(5, np.random.default_rng(seed))
                assert best <= ((b - v @ other) ** 2).sum()


def test_start_is_recorded_and_iterations_alternate():
    rng = np.random.default_rng(2)
    vx, vy = rng.standard_normal((80, 3)), rng.standard_normal((80, 3))
    r0 = ccaitq.random_rotation(3, np.random.default_rng(5))
    _, h = acq.co_quantize(vx, vy, 0.5, 1, np.random.default_rng(0), r0=r0)
    bx, by = acq.code_step(vx @ r0, vy @ r0, 0.5)
    assert h[0]["objective"] == pytest.approx(_q(vx, vy, {"B_x": bx, "B_y": by, "R_x": r0, "R_y": r0}, 0.5))
    f, _ = acq.co_quantize(vx, vy, 0.5, 1, np.random.default_rng(0), r0=r0)
    u, _, wt = np.linalg.svd(vx.T @ bx)
    np.testing.assert_allclose(f["R_x"], u @ wt, atol=1e-12)


# ----------------------------------------------------------------------------------- known answers
def test_shared_binary_sources_give_identical_codes_per_pair():
    found = []
    for seed in range(3):
        s, x, y = binary_sources(seed=seed)
        m = acq.ACQ(3, {"reg": 1e-4})                         # noiseless sources: a small ridge
        hist = m.fit(x, y, seed=seed)
        bx, by = m.encode_image(x), m.encode_text(y)
        assert (bx == by).mean() > 0.99
        assert hist[-1]["agreement"] > 0.99
        assert np.all(np.abs(bx.mean(0) - 0.5) < 0.1)          # balanced, like the sources
        found.append(_signed_permutation(2.0 * bx - 1.0, s))   # ... and the sources themselves
    assert sum(found) >= 2                                     # (a local optimum is allowed, as in ITQ)


def test_cluster_retrieval_beats_random_codes_clearly():
    x, y, lab = clusters()
    m = acq.ACQ(8)
    m.fit(x[:400], y[:400])
    q, db = slice(400, 600), slice(0, 400)
    i2t = map_at_k(pack_bits(m.encode_image(x[q])), pack_bits(m.encode_text(y[db])), lab[q], lab[db], 100)
    t2i = map_at_k(pack_bits(m.encode_text(y[q])), pack_bits(m.encode_image(x[db])), lab[q], lab[db], 100)
    rng = np.random.default_rng(0)
    rnd = map_at_k(pack_bits(rng.integers(0, 2, (200, 8))), pack_bits(rng.integers(0, 2, (400, 8))), lab[q], lab[db], 100)
    assert rnd < 0.3 and i2t > rnd + 0.35 and t2i > rnd + 0.35


def test_projections_are_scaled_cca_directions_times_each_modalitys_rotation():
    s, x, y = binary_sources(n=300, seed=4)
    m = acq.ACQ(3, {"lambda": 0.2, "reg": 1e-4})
    m.fit(x, y)
    for v, w, r in ((x, m.w_x_, m.rotation_x_), (y, m.w_y_, m.rotation_y_)):
        vc = v - v.mean(0)
        cvv = vc.T @ vc / len(v)
        cvv += 1e-4 * np.trace(cvv) / len(cvv) * np.eye(len(cvv))
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-10)
        u = w @ r.T                                           # W_v diag(rho), its own rotation undone
        np.testing.assert_allclose(u.T @ cvv @ u, np.diag(m.correlations_ ** 2), atol=1e-8)
    assert not np.allclose(m.rotation_x_, m.rotation_y_)     # one quantiser per modality


# ----------------------------------------------------------------------------------- interface
def test_determinism_seed_state_round_trip_and_history():
    s, x, y = binary_sources(n=200, seed=6)
    a, b, c = acq.ACQ(3), acq.ACQ(3), acq.ACQ(3)
    ha = a.fit(x, y, seed=3)
    b.fit(x, y, seed=3)
    c.fit(x, y, seed=4)
    assert np.array_equal(a.encode_image(x), b.encode_image(x)) and np.array_equal(a.w_y_, b.w_y_)
    assert not np.allclose(a.rotation_x_, c.rotation_x_)
    assert len(ha) == 51 and all({"objective", "quant_x", "quant_y", "disagreement", "agreement"} <= set(h) for h in ha)
    codes = a.encode_text(y[:7])
    assert codes.dtype == np.uint8 and codes.shape == (7, 3) and set(np.unique(codes)) <= {0, 1}
    r = acq.ACQ.from_state(3, a.config, {k: np.array(v) for k, v in a.state().items()})
    assert np.array_equal(r.encode_image(x), a.encode_image(x)) and np.array_equal(r.encode_text(y), a.encode_text(y))
    np.testing.assert_array_equal(r.rotation_y_, a.rotation_y_)


@pytest.mark.parametrize("settings, match", [
    ({"lam": 1}, "unknown key.*lam"),
    ({"lambda": -1}, "lambda must be a finite number >= 0"),
    ({"iterations": 0}, "iterations must be an integer >= 1"),
    ({"eig_power": -0.5}, "eig_power must be"),
    ({"reg": "x"}, "reg must be"),
])
def test_bad_settings_are_one_line_errors(settings, match):
    with pytest.raises(PipelineError, match=match) as e:
        acq.ACQ(2, settings)
    assert "\n" not in str(e.value)


def test_bad_inputs_are_one_line_errors():
    s, x, y = binary_sources(n=60)
    fitted = acq.ACQ(2, {"iterations": 2})
    fitted.fit(x, y)
    bad = x.copy()
    bad[5, 2] = np.nan
    cases = [
        (lambda: acq.ACQ(2).fit(x, y[:-1]), "row counts differ"),
        (lambda: acq.ACQ(2).fit(bad, y), r"image features: NaN/inf in 1 rows.*row 5, column 2"),
        (lambda: acq.ACQ(7).fit(x, y), r"bits \(7\) must be at most min\(d_x, d_y\) = 6"),
        (lambda: acq.ACQ(2).fit(x[:, 0], y), "expected a 2-D"),
        (lambda: fitted.encode_image(y), "encode_image: expected 8 columns"),
        (lambda: acq.ACQ(2).encode_image(x), "not fitted"),
        (lambda: acq.ACQ.from_state(2, {}, {"w_x": np.zeros((8, 3))}), "w_x has shape"),
    ]
    for fn, match in cases:
        with pytest.raises(PipelineError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)
