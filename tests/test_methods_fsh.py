"""FSH (Liu et al., CVPR 2017): the kNN indicators and the fusion similarity against the released
code's double loop, k-means anchors, the monotone objective of the discrete updates computed
independently (each block its exact minimiser), shared sources and clusters (linear and kernel
hash functions), determinism, state and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.methods import fsh

from hashing_problems import binary_sources, clusters, mean_ap


# ----------------------------------------------------------------------------------- the graph
def test_knn_indicator_by_hand():
    d2 = np.array([[0.0, 4.0, 1.0, 9.0], [3.0, 3.0, 0.5, 7.0]])
    h = fsh.knn_indicator(d2, 2).toarray()
    np.testing.assert_array_equal(h, [[0.5, 0, 0.5, 0], [0.5, 0, 0.5, 0]])     # row 2: a tie, the lower index
    np.testing.assert_allclose(h.sum(1), 1.0)


def test_fusion_graph_equals_the_released_codes_double_loop():
    rng = np.random.default_rng(1)
    n, m, k, eta = 12, 6, 3, 0.3
    x, y = rng.standard_normal((n, 4)), rng.standard_normal((n, 3))
    ax, ay = rng.standard_normal((m, 4)), rng.standard_normal((m, 3))
    g = fsh.fusion_graph(x, y, ax, ay, k, eta)

    def d2(a, b):
        return np.array([[((p - q) ** 2).sum() for q in b] for p in a])

    kxx, kyy = d2(ax, ax), d2(ay, ay)
    off = ~np.eye(m, dtype=bool)
    kx, ky = np.exp(-kxx / (2 * kxx[off].mean())), np.exp(-kyy / (2 * kyy[off].mean()))
    indx, indy = np.argsort(d2(x, ax), 1)[:, :k], np.argsort(d2(y, ay), 1)[:, :k]
    indax, inday = np.argsort(kxx, 1)[:, :k], np.argsort(kyy, 1)[:, :k]
    a1, a2 = np.zeros((n, m)), np.zeros((n, m))
    for i in range(n):                      # trainFSH.m: s1 = (1/k^2) sum(sum(D3(indx(m1,:), inday(m2,:))))
        for j in range(m):
            a1[i, j] = kx[np.ix_(indx[i], inday[j])].sum() / k ** 2
            a2[i, j] = ky[np.ix_(indy[i], indax[j])].sum() / k ** 2
    np.testing.assert_allclose(g["A_x"], a1, atol=1e-12)
    np.testing.assert_allclose(g["A_y"], a2, atol=1e-12)
    np.testing.assert_allclose(g["D"], eta * a1 + (1 - eta) * a2, atol=1e-12)
    assert np.all(inday[:, 0] == np.arange(m))          # an anchor is its own first neighbour


def test_kmeans_anchors_find_separated_blobs():
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    lab = np.repeat(np.arange(3), 50)
    z = centres[lab] + 0.1 * rng.standard_normal((150, 2))
    found = []
    for seed in range(3):
        c, assign = fsh.kmeans_anchors(z, 3, 10, np.random.default_rng(seed))
        # the same partition as the blobs (up to relabelling) and their means
        match = np.array([np.bincount(assign[lab == i], minlength=3).argmax() for i in range(3)])
        found.append(len(set(match)) == 3 and all((assign[lab == i] == match[i]).all() for i in range(3)))
        if found[-1]:
            np.testing.assert_allclose(c[match], [z[lab == i].mean(0) for i in range(3)], atol=1e-9)
    assert sum(found) >= 2


# ----------------------------------------------------------------------------------- the solver
def _setup(n=120, m=15, bits=4, seed=3):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 6)), rng.standard_normal((n, 5))
    y[:, :3] += x[:, :3]
    x, y = x - x.mean(0), y - y.mean(0)
    ax, ay = x[:m] + 0.01, y[:m] - 0.01
    d = fsh.fusion_graph(x, y, ax, ay, 3, 0.5)["D"]
    d /= d.sum(1).mean()
    rhos = [1e-3 * (x * x).sum() / 6, 1e-3 * (y * y).sum() / 5]
    w0 = [rng.standard_normal((6, bits)), rng.standard_normal((5, bits))]
    return x, y, ay, d, rhos, w0


def _j(d, x, y, s, lam, rhos):
    """Eq. FSH written out."""
    b, bs = s["B"], s["B_s"]
    return (-np.trace(b.T @ d @ bs) + lam * (np.linalg.norm(b - x @ s["W_x"]) ** 2 + rhos[0] * np.linalg.norm(s["W_x"]) ** 2
                                              + np.linalg.norm(b - y @ s["W_y"]) ** 2 + rhos[1] * np.linalg.norm(s["W_y"]) ** 2))


def test_objective_never_increases_computed_independently_and_blocks_are_exact():
    x, y, ay, d, rhos, w0 = _setup()
    for lam in (0.5, 5.0):
        snaps = []
        sol, hist = fsh.solve_fsh(d, [x, y], ay, w0, lam, rhos, 30,
                                  callback=lambda t, s: snaps.append({k: v.copy() for k, v in s.items()}))
        j = np.array([_j(d, x, y, s, lam, rhos) for s in snaps])
        np.testing.assert_allclose([h["objective"] for h in hist[1:]], j, rtol=1e-10)
        objs = [h["objective"] for h in hist]
        assert np.all(np.diff(objs) <= 1e-9 * abs(objs[0])) and objs[-1] < objs[0]
        # start: B = sgn(X_y W_y), B_s = sgn(A_y W_y)
        b0 = np.where(y @ w0[1] >= 0, 1.0, -1.0)
        bs0 = np.where(ay @ w0[1] >= 0, 1.0, -1.0)
        assert hist[0]["objective"] == pytest.approx(_j(d, x, y, {"B": b0, "B_s": bs0, "W_x": w0[0], "W_y": w0[1]},
                                                        lam, rhos))
        # W: the ridge regression of the codes (zero gradient)
        b = sol["B"]
        for v, w, rho in ((x, sol["W_x"], rhos[0]), (y, sol["W_y"], rhos[1])):
            assert np.abs(-2 * v.T @ (b - v @ w) + 2 * rho * w).max() < 1e-8 * len(v)
        # B_s = sgn(D^T B) (after B; W does not involve it): no flip of an anchor bit lowers J
        base = _j(d, x, y, sol, lam, rhos)
        np.testing.assert_array_equal(sol["B_s"], np.where(d.T @ b >= 0, 1.0, -1.0))
        for i, c in np.ndindex(*sol["B_s"].shape):
            flipped = {**sol, "B_s": sol["B_s"].copy()}
            flipped["B_s"][i, c] *= -1
            assert _j(d, x, y, flipped, lam, rhos) >= base - 1e-9
    # the last iteration changed nothing (a fixed point) or max_iter was reached
    assert hist[-1]["changed"] == 0 or len(hist) == 31


def test_solver_stops_at_a_fixed_point():
    x, y, ay, d, rhos, w0 = _setup(seed=4)
    _, hist = fsh.solve_fsh(d, [x, y], ay, w0, 10.0, rhos, 200)
    assert len(hist) < 201 and hist[-1]["changed"] == 0 and all(h["changed"] > 0 for h in hist[1:-1])
    _, hist2 = fsh.solve_fsh(d, [x, y], ay, w0, 10.0, rhos, 1)
    assert len(hist2) == 2


# ----------------------------------------------------------------------------------- known answers
def test_shared_binary_sources_give_identical_codes_per_pair():
    for seed in range(2):
        s, x, y = binary_sources(seed=seed)
        m = fsh.FSH(3, {"anchors": 60})
        m.fit(x, y, seed=seed)
        bx, by = m.encode_image(x), m.encode_text(y)
        assert (bx == by).mean() > 0.99
        assert np.all(np.abs(bx.mean(0) - 0.5) < 0.15)
        # codes are the signs of the centred projections
        np.testing.assert_array_equal(bx, ((x - x.mean(0)) @ m.w_x_ >= 0).astype(np.uint8))


@pytest.mark.parametrize("settings, margin", [({"anchors": 60}, 0.2), ({"anchors": 60, "hash": "kernel"}, 0.4),
                                              ({"anchors": 60, "init": "cca"}, 0.2)])
def test_cluster_retrieval_beats_random_codes_clearly(settings, margin):
    x, y, lab = clusters()
    m = fsh.FSH(8, settings)
    m.fit(x[:400], y[:400])
    i2t, t2i, rnd = mean_ap(m, x, y, lab, 8)
    assert rnd < 0.3 and i2t > rnd + margin and t2i > rnd + margin


# ----------------------------------------------------------------------------------- interface
@pytest.mark.parametrize("hash_", ["linear", "kernel"])
def test_determinism_seed_state_round_trip(hash_):
    s, x, y = binary_sources(n=150, seed=6)
    cfg = {"anchors": 20, "hash": hash_}
    a, b, c = fsh.FSH(3, cfg), fsh.FSH(3, cfg), fsh.FSH(3, cfg)
    ha = a.fit(x, y, seed=1)
    b.fit(x, y, seed=1)
    c.fit(x, y, seed=2)
    assert np.array_equal(a.w_x_, b.w_x_) and np.array_equal(a.encode_text(y), b.encode_text(y))
    assert not np.allclose(a.anchors_x_, c.anchors_x_)
    assert ha[0]["epoch"] == 0 and all({"objective", "graph", "regression_x", "regression_y"} <= set(h) for h in ha)
    codes = a.encode_image(x[:5])
    assert codes.dtype == np.uint8 and codes.shape == (5, 3) and set(np.unique(codes)) <= {0, 1}
    emb = a.embed_text(y)
    np.testing.assert_array_equal(a.encode_text(y), (emb >= 0).astype(np.uint8))
    r = fsh.FSH.from_state(3, a.config, {k: np.array(v) for k, v in a.state().items()})
    assert np.array_equal(r.encode_image(x), a.encode_image(x)) and np.array_equal(r.encode_text(y), a.encode_text(y))
    assert a.w_x_.shape[0] == (20 if hash_ == "kernel" else 8)


@pytest.mark.parametrize("settings, match", [
    ({"anchor": 5}, "unknown key.*anchor"),
    ({"anchors": 1}, "anchors must be an integer >= 2"),
    ({"eta": 1.5}, "eta must be a finite number >= 0 and <= 1"),
    ({"lambda": 0}, "lambda must be a finite number > 0"),
    ({"hash": "rbf"}, "hash must be one of linear, kernel"),
    ({"init": "pca"}, "init must be one of random, cca"),
])
def test_bad_settings_are_one_line_errors(settings, match):
    with pytest.raises(PipelineError, match=match) as e:
        fsh.FSH(2, settings)
    assert "\n" not in str(e.value)


def test_more_anchors_than_training_pairs_uses_every_pair_with_a_warning(caplog):
    """A small collection with the default 500 anchors trains (each pair an anchor), and says so."""
    s, x, y = binary_sources(n=60)
    m = fsh.FSH(2, {"anchors": 61, "max_iter": 3})
    m.fit(x, y)
    assert m.anchors_x_.shape[0] == m.anchors_y_.shape[0] == 60
    assert "fsh: 61 anchors asked for but only 60 training pairs: using 60 anchors" in caplog.text


def test_bad_inputs_are_one_line_errors():
    s, x, y = binary_sources(n=60)
    fitted = fsh.FSH(2, {"anchors": 10, "hash": "kernel", "max_iter": 3})
    fitted.fit(x, y)
    bad = np.zeros((9000, 6))
    bad[8200, 1] = np.inf
    state = fitted.state()
    cases = [
        (lambda: fsh.FSH(2, {"anchors": 5, "knn": 6}).fit(x, y), r"knn \(6\) must be at most the anchors \(5\)"),
        (lambda: fsh.FSH(7, {"anchors": 10}).fit(x, y), r"bits \(7\) must be at most min\(d_x, d_y\) = 6"),
        (lambda: fsh.FSH(2).fit(x, y[:30]), "row counts differ"),
        (lambda: fsh.FSH(2, {"anchors": 10}).fit(np.where(x > 4, np.nan, x), y), "image features: NaN/inf"),
        (lambda: fitted.encode_image(y), "encode_image: expected 8 columns"),
        (lambda: fitted.encode_text(bad), "encode_text: NaN/inf in 1 rows.*first at row 8200"),
        (lambda: fsh.FSH(2).encode_text(y), "not fitted"),
        (lambda: fsh.FSH.from_state(2, fitted.config, {k: v for k, v in state.items() if k != "anchors_y"}),
         "missing 'anchors_y'"),
        (lambda: fsh.FSH.from_state(2, fitted.config, {**state, "anchors_x": state["anchors_x"][:4]}),
         "4/10 anchors but projections of 10/10 rows"),
    ]
    for fn, match in cases:
        with pytest.raises(PipelineError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)


def test_fit_uses_the_normalised_fusion_graph_of_its_anchors():
    x, y, _ = clusters(n=200)
    m = fsh.FSH(4, {"anchors": 25, "knn": 4, "eta": 0.3})
    hist = m.fit(x, y, seed=5)
    g = m.graph
    xc, yc = x - x.mean(0), y - y.mean(0)
    ref = fsh.fusion_graph(xc, yc, m.anchors_x_ - x.mean(0), m.anchors_y_ - y.mean(0), 4, 0.3)["D"]
    np.testing.assert_allclose(g["D"], ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g["D_normalised"], ref / ref.sum(1).mean(), rtol=1e-10)
    assert g["D_normalised"].sum(1).mean() == pytest.approx(1.0)
    # the recorded graph term is that of the returned codes on this graph
    assert hist[-1]["graph"] == pytest.approx(-np.trace(g["B"].T @ g["D_normalised"] @ g["B_s"]), rel=1e-10)
    # the codes follow the graph: better than sign random projections with their best anchor codes
    b_rnd = np.where(xc @ np.random.default_rng(0).standard_normal((20, 4)) >= 0, 1.0, -1.0)
    d_n = g["D_normalised"]
    rnd = -np.trace(b_rnd.T @ d_n @ np.where(d_n.T @ b_rnd >= 0, 1.0, -1.0))
    assert hist[-1]["graph"] < 1.5 * rnd and hist[-1]["graph"] < -0.1 * len(x) * 4
    np.testing.assert_array_equal(g["B_s"], np.where(g["D_normalised"].T @ g["B"] >= 0, 1.0, -1.0))
