"""The CCA-family baselines' default ridge (reg = 1, relative to the mean variance) and why.

With d close to n a ridge of 1e-4 lets CCA fit directions that correlate only on the training
pairs; the default must generalise to unseen pairs where 1e-4 does not (the openclipart finding,
pipeline/methods/ccaitq.py), on a synthetic problem built to show it."""

import numpy as np
import pytest

from pipeline.methods import acq, ccaitq, cvh, pdh


@pytest.mark.parametrize("mod", [ccaitq, cvh, acq, pdh])
def test_default_relative_ridge_is_one(mod):
    assert mod.Config().reg == 1.0


def _d_close_to_n(n, d=180, k=4, seed=0):
    """Pairs sharing k latent signals (weak, spread over all dimensions) plus strong view noise."""
    rng = np.random.default_rng(seed)
    ax, ay = rng.standard_normal((k, d)), rng.standard_normal((k, 60))
    z = rng.standard_normal((2 * n, k))
    x = z @ ax + 3.0 * rng.standard_normal((2 * n, d))
    y = z @ ay + 3.0 * rng.standard_normal((2 * n, 60))
    return x[:n], y[:n], x[n:], y[n:]


@pytest.mark.parametrize("cls", [ccaitq.CCAITQ, cvh.CVH])
def test_default_ridge_generalises_where_a_tiny_ridge_overfits(cls):
    x, y, xt, yt = _d_close_to_n(n=200)              # d = 180 image dimensions, 200 training pairs

    def agreement(model, a, b):                       # fraction of equal bits between a pair's codes
        return float((model.encode_image(a) == model.encode_text(b)).mean())

    tiny, default = cls(4, {"reg": 1e-4}), cls(4)
    tiny.fit(x, y, seed=0)
    default.fit(x, y, seed=0)
    # a tiny ridge matches the training pairs at least as well, but unseen pairs much worse
    assert agreement(tiny, x, y) >= agreement(default, x, y) - 0.02
    assert agreement(default, xt, yt) > agreement(tiny, xt, yt) + 0.1
