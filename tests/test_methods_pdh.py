"""PDH (Rastegari et al., ICML 2013): the kNN graph against brute force, the self-taught code
step by hand, the max-margin hyperplane step against scikit-learn's LinearSVC, shared binary
sources with identical codes per pair, cluster retrieval far above random codes, the neighbours'
effect, determinism, state and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from sklearn.svm import LinearSVC

from pipeline.errors import PipelineError
from pipeline.methods import pdh

from hashing_problems import binary_sources, clusters, mean_ap


# ----------------------------------------------------------------------------------- pieces
def test_knn_graph_matches_brute_force_and_excludes_self(monkeypatch):
    monkeypatch.setattr(pdh, "KNN_BLOCK", 7)                  # several blocks
    rng = np.random.default_rng(0)
    z = rng.standard_normal((30, 4))
    a = pdh.knn_graph(z, 3)
    assert scipy.sparse.issparse(a) and a.shape == (30, 30) and a.nnz == 90
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    want = np.zeros((30, 30))
    for i in range(30):
        want[i, np.argsort(d[i])[:3]] = 1 / 3
    np.testing.assert_allclose(a.toarray(), want)
    assert np.all(a.diagonal() == 0)


def test_self_taught_codes_by_hand():
    # 3 samples, 1 bit; sample 0's neighbours: 1 (view 1) and 2 (view 2), etc.
    f1 = np.array([[2.0], [-0.5], [0.1]])
    f2 = np.array([[0.4], [-3.0], [0.3]])
    a1 = scipy.sparse.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [1, 0, 0]], float))
    a2 = scipy.sparse.csr_matrix(np.array([[0, 0, 1], [0, 0, 1], [0, 1, 0]], float))
    p = np.array([[(1 + 0.4) / 2], [(-0.5 - 1) / 2], [(0.1 + 0.3) / 2]])        # clipped mean votes
    np.testing.assert_allclose(p, [[0.7], [-0.75], [0.2]])
    # alpha 0: own votes; alpha 1: neighbours' mean vote (0: (p1 + p2)/2, 1: (p0 + p2)/2, 2: (p0 + p1)/2)
    np.testing.assert_array_equal(pdh.self_taught_codes(f1, f2, a1, a2, 0.0), [[1], [-1], [1]])
    np.testing.assert_array_equal(pdh.self_taught_codes(f1, f2, a1, a2, 1.0), [[-1], [1], [-1]])
    # alpha 0.5 on sample 2: 0.5 * 0.2 + 0.5 * (-0.025) > 0
    np.testing.assert_array_equal(pdh.self_taught_codes(f1, f2, a1, a2, 0.5)[2], [1])


def test_hyperplane_step_is_the_l2_svm_of_liblinear():
    rng = np.random.default_rng(1)
    n, dim = 200, 5
    x = rng.standard_normal((n, dim))
    b = np.where(x @ rng.standard_normal((dim, 2)) + 0.7 * rng.standard_normal((n, 2)) >= 0, 1.0, -1.0)
    lam = 0.05
    w, obj = pdh.svm_hyperplanes(x, b, np.zeros((dim, 2)), lam, 500)
    f, g = pdh.svm_objective(w, x, b, lam)
    assert obj == pytest.approx(f) and np.abs(g).max() < 1e-6
    for k in range(2):
        sk = LinearSVC(C=1.0 / (lam * n), loss="squared_hinge", fit_intercept=False, tol=1e-10, max_iter=100000,
                       dual=True).fit(x, b[:, k])
        np.testing.assert_allclose(w[:, k], sk.coef_.ravel(), rtol=1e-4, atol=1e-6)
    # the gradient of eq. PDH-W against finite differences
    w0 = rng.standard_normal((dim, 2))
    f0, g0 = pdh.svm_objective(w0, x, b, lam)
    e = np.zeros_like(w0)
    e[3, 1] = 1e-6
    assert (pdh.svm_objective(w0 + e, x, b, lam)[0] - pdh.svm_objective(w0 - e, x, b, lam)[0]) / 2e-6 == \
        pytest.approx(g0[3, 1], rel=1e-5)


# ----------------------------------------------------------------------------------- known answers
def test_shared_binary_sources_give_identical_codes_per_pair_and_predictable_bits():
    for seed in range(2):
        s, x, y = binary_sources(400, seed=seed)
        m = pdh.PDH(3)
        hist = m.fit(x, y)
        bx, by = m.encode_image(x), m.encode_text(y)
        assert (bx == by).mean() > 0.98
        assert np.all(np.abs(bx.mean(0) - 0.5) < 0.1)
        last = hist[-1]
        assert last["fit_x"] > 0.98 and last["fit_y"] > 0.98 and last["cross_view_agreement"] > 0.98
        # each view's final hyperplanes are the L2-SVM of the final codes (eq. PDH-W's optimum),
        # on the view scaled to unit mean squared norm, and separate them with margin
        for v, w in ((x, m.w_x_), (y, m.w_y_)):
            vc = v - v.mean(0)
            sv = np.sqrt((vc ** 2).sum(1).mean())
            f, g = pdh.svm_objective(w * sv, vc / sv, m.codes, m.config.svm_reg)
            assert np.abs(g).max() < 1e-6 and f < 0.2 * 3        # 3: the objective of W = 0
            assert np.median(m.codes * (vc @ w)) > 0.8


def test_cluster_retrieval_beats_random_codes_clearly():
    x, y, lab = clusters()
    m = pdh.PDH(8)
    m.fit(x[:400], y[:400])
    i2t, t2i, rnd = mean_ap(m, x, y, lab, 8)
    assert rnd < 0.3 and i2t > rnd + 0.35 and t2i > rnd + 0.35


def test_neighbours_vote_changes_the_codes():
    x, y, _ = clusters(n=300, seed=2)
    codes = {}
    for alpha in (0.0, 0.9):
        m = pdh.PDH(6, {"alpha": alpha, "iterations": 3})
        m.fit(x, y)
        codes[alpha] = m.codes
    assert (codes[0.0] != codes[0.9]).mean() > 0.01


# ----------------------------------------------------------------------------------- interface
def test_determinism_state_round_trip_and_history():
    s, x, y = binary_sources(n=150, seed=6)
    a, b = pdh.PDH(3, {"iterations": 3}), pdh.PDH(3, {"iterations": 3})
    ha = a.fit(x, y, seed=1)
    b.fit(x, y, seed=2)                           # nothing random: the seed does not matter
    assert np.array_equal(a.w_x_, b.w_x_) and np.array_equal(a.encode_text(y), b.encode_text(y))
    assert 1 <= len(ha) <= 3 and [h["epoch"] for h in ha] == list(range(1, len(ha) + 1))
    assert all({"svm_x", "svm_y", "changed", "fit_x", "fit_y", "cross_view_agreement"} <= set(h) for h in ha)
    codes = a.encode_image(x[:5])
    assert codes.dtype == np.uint8 and codes.shape == (5, 3) and set(np.unique(codes)) <= {0, 1}
    r = pdh.PDH.from_state(3, a.config, {k: np.array(v) for k, v in a.state().items()})
    assert np.array_equal(r.encode_image(x), a.encode_image(x)) and np.array_equal(r.encode_text(y), a.encode_text(y))


def test_stops_when_the_codes_settle():
    s, x, y = binary_sources(n=200, seed=7)
    hist = pdh.PDH(3, {"iterations": 50, "tol": 0.01}).fit(x, y)
    assert len(hist) < 50 and hist[-1]["changed"] <= 0.01
    assert all(h["changed"] > 0.01 for h in hist[1:-1])


@pytest.mark.parametrize("settings, match", [
    ({"C": 1}, "unknown key.*C"),
    ({"svm_reg": 0}, "svm_reg must be a finite number > 0"),
    ({"alpha": 2}, "alpha must be a finite number >= 0 and <= 1"),
    ({"knn": 0}, "knn must be an integer >= 1"),
    ({"iterations": 1.5}, "iterations must be an integer"),
])
def test_bad_settings_are_one_line_errors(settings, match):
    with pytest.raises(PipelineError, match=match) as e:
        pdh.PDH(2, settings)
    assert "\n" not in str(e.value)


def test_bad_inputs_are_one_line_errors():
    s, x, y = binary_sources(n=40)
    fitted = pdh.PDH(2, {"iterations": 1, "knn": 3})
    fitted.fit(x, y)
    bad = y.copy()
    bad[3, 0] = np.inf
    cases = [
        (lambda: pdh.PDH(2, {"knn": 40}).fit(x, y), r"knn \(40\) must be smaller than the number of training pairs \(40\)"),
        (lambda: pdh.PDH(7).fit(x, y), r"bits \(7\) must be at most min\(d_x, d_y\) = 6"),
        (lambda: pdh.PDH(2).fit(x, bad), r"text features: NaN/inf in 1 rows.*row 3, column 0"),
        (lambda: pdh.PDH(2).fit(x[:20], y), "row counts differ"),
        (lambda: pdh.PDH(2).fit(x, y, seed=1.5), "seed must be an integer"),
        (lambda: fitted.encode_text(x), "encode_text: expected 6 columns"),
        (lambda: pdh.PDH(2).encode_image(x), "not fitted"),
        (lambda: pdh.PDH.from_state(2, {}, {}), "missing 'w_x'"),
    ]
    for fn, match in cases:
        with pytest.raises(PipelineError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)
