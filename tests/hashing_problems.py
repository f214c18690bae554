"""Small problems with a known answer, shared by the tests of the linear-family methods (PDH,
ACQ, FSH): paired views of shared binary sources, and labelled clusters scored against random
codes."""

import numpy as np

from pipeline.eval.codes import pack_bits
from pipeline.eval.metrics import map_at_k


def binary_sources(n=600, k=3, seed=0, noise=0.1):
    """x, y: invertible linear maps of [s + noise, nuisance] with s in {-1, 1}^k shared by the pair."""
    rng = np.random.default_rng(seed)
    s = np.where(rng.random((n, k)) < 0.5, -1.0, 1.0)
    x = np.hstack([s + noise * rng.standard_normal((n, k)), 0.3 * rng.standard_normal((n, 3))]) \
        @ rng.standard_normal((k + 3, 8))
    y = np.hstack([s + noise * rng.standard_normal((n, k)), 0.3 * rng.standard_normal((n, 2))]) \
        @ rng.standard_normal((k + 2, 6))
    return s, x + 3.0, y - 1.0


def clusters(n=600, c=6, dx=20, dy=12, seed=0):
    """Paired views of ``c`` labelled clusters (one-hot labels)."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, c, n)
    x = rng.standard_normal((c, dx))[lab] + rng.standard_normal((n, dx))
    y = rng.standard_normal((c, dy))[lab] + rng.standard_normal((n, dy))
    return x, y, np.eye(c, dtype=np.uint8)[lab]


def mean_ap(m, x, y, lab, bits):
    """mAP@100 of I->T and T->I (rows 400..600 query rows 0..400) and of random codes."""
    q, db = slice(400, 600), slice(0, 400)
    i2t = map_at_k(pack_bits(m.encode_image(x[q])), pack_bits(m.encode_text(y[db])), lab[q], lab[db], 100)
    t2i = map_at_k(pack_bits(m.encode_text(y[q])), pack_bits(m.encode_image(x[db])), lab[q], lab[db], 100)
    rng = np.random.default_rng(0)
    rnd = map_at_k(pack_bits(rng.integers(0, 2, (200, bits))), pack_bits(rng.integers(0, 2, (400, bits))),
                   lab[q], lab[db], 100)
    return i2t, t2i, rnd
