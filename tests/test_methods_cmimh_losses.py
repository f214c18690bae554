"""Loss terms of CMIMH against values computed by hand (math / numpy), not by the same code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.methods import cmimh_losses as L


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def test_reconstruction_sums_over_features_and_averages_over_batch():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x_hat = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    # row 0: 1^2 + 0 = 1; row 1: 2^2 + 3^2 = 13; mean = 7 (a mean over dims would give 3.5)
    assert L.reconstruction(x, x_hat).item() == pytest.approx(7.0)


def test_reconstruction_mean_divides_by_the_feature_dimension():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x_hat = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    # the rec_norm: mean departure: the per-feature squared error, mean over the batch: 7 / 2
    assert L.reconstruction(x, x_hat, "mean").item() == pytest.approx(3.5)
    assert L.reconstruction(x, x_hat, "sum").item() == pytest.approx(7.0)
    with pytest.raises(ValueError, match="reduction"):
        L.reconstruction(x, x_hat, "median")


def test_reconstruction_shape_mismatch():
    with pytest.raises(ValueError):
        L.reconstruction(torch.zeros(2, 3), torch.zeros(2, 2))


def test_js_mi_2x2_by_hand():
    s = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    pos = (-softplus(-1.0) - softplus(-0.5)) / 2
    neg = (softplus(-1.0) + softplus(2.0)) / 2
    assert L.js_mi(s).item() == pytest.approx(pos - neg, rel=1e-6)


def test_js_mi_3x3_by_hand():
    m = [[0.3, -2.0, 1.0], [0.0, 4.0, -0.5], [2.5, 1.5, -1.0]]
    pos = sum(-softplus(-m[i][i]) for i in range(3)) / 3
    neg = sum(softplus(m[i][j]) for i in range(3) for j in range(3) if i != j) / 6
    assert L.js_mi(torch.tensor(m)).item() == pytest.approx(pos - neg, rel=1e-6)


def test_js_mi_zero_scores_is_minus_two_log_two():
    # the "no signal" value that marks a collapsed critic in the training log
    assert L.js_mi(torch.zeros(5, 5)).item() == pytest.approx(-2 * math.log(2), rel=1e-6)


def test_js_mi_needs_square_with_negatives():
    with pytest.raises(ValueError):
        L.js_mi(torch.zeros(1, 1))
    with pytest.raises(ValueError):
        L.js_mi(torch.zeros(2, 3))


def _np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))).sum(axis=1)


def test_sym_bernoulli_kl_matches_numpy():
    p = np.array([[0.9, 0.2, 0.5], [0.3, 0.6, 0.99]])
    q = np.array([[0.7, 0.1, 0.5], [0.8, 0.6, 0.05]])
    want = np.mean(_np_kl(p, q) + _np_kl(q, p))
    got = L.sym_bernoulli_kl(torch.tensor(p), torch.tensor(q)).item()
    assert got == pytest.approx(want, rel=1e-9)


def test_sym_bernoulli_kl_zero_for_equal_and_finite_when_saturated():
    p = torch.tensor([[0.1, 0.5, 0.93]])
    assert L.sym_bernoulli_kl(p, p).item() == pytest.approx(0.0, abs=1e-12)
    v = L.sym_bernoulli_kl(torch.tensor([[0.0]], dtype=torch.float64),
                           torch.tensor([[1.0]], dtype=torch.float64), eps=1e-6)
    # clamped to [1e-6, 1-1e-6]: (1-2e-6) * 2 * logit(1-1e-6)
    e = 1e-6
    want = 2 * (1 - 2 * e) * math.log((1 - e) / e)
    assert math.isfinite(v.item()) and v.item() == pytest.approx(want, rel=1e-4)


def test_balance_by_hand():
    p = torch.tensor([[0.9, 0.2, 0.5], [0.7, 0.4, 0.5]])
    # column means 0.8, 0.3, 0.5 -> |0.3| + |-0.2| + 0 = 0.5
    assert L.balance(p).item() == pytest.approx(0.5)


def test_permute_dims_keeps_columns_and_breaks_rows():
    n, k = 64, 6
    p = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, k)  # every row constant = its index
    g = torch.Generator().manual_seed(0)
    q = L.permute_dims(p, g)
    assert q.shape == p.shape
    for j in range(k):  # same multiset per column
        assert torch.equal(q[:, j].sort().values, p[:, j])
    # association broken: no column is left in place, rows are no longer constant
    assert all(not torch.equal(q[:, j], p[:, j]) for j in range(k))
    rows_intact = (q == q[:, :1]).all(dim=1).sum().item()
    assert rows_intact <= 2
    # columns are permuted independently of one another
    assert not torch.equal(q[:, 0], q[:, 1])


def test_permute_dims_reproducible_with_generator():
    p = torch.rand(10, 4, generator=torch.Generator().manual_seed(3))
    a = L.permute_dims(p, torch.Generator().manual_seed(7))
    b = L.permute_dims(p, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_tc_discriminator_loss_by_hand():
    lj = torch.tensor([2.0, -1.0])
    lp = torch.tensor([0.5, -3.0])
    # BCE(label 1) = softplus(-l), BCE(label 0) = softplus(l); mean of the two halves
    joint = (softplus(-2.0) + softplus(1.0)) / 2
    perm = (softplus(0.5) + softplus(-3.0)) / 2
    assert L.tc_discriminator_loss(lj, lp).item() == pytest.approx(0.5 * (joint + perm), rel=1e-6)


def test_tc_estimate_is_mean_log_density_ratio():
    logits = torch.tensor([[0.5], [-2.0], [3.0]])
    d = [1 / (1 + math.exp(-v)) for v in (0.5, -2.0, 3.0)]
    want = sum(math.log(di / (1 - di)) for di in d) / 3
    assert L.tc_estimate(logits).item() == pytest.approx(want, rel=1e-5)
