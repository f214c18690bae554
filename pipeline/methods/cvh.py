"""CVH: Cross-View Hashing (Kumar & Udupa, "Learning Hash Functions for Cross-View Similarity
Search", IJCAI 2011), in the unsupervised paired two-view setting of the CMIMH paper's Table III.

The paper: view k of object i gets the code y_i^(k) = sgn(A^(k)T x_i^(k)) in {-1, 1}^d. The
codes minimise the similarity-weighted Hamming distance between objects, summed over views and
over pairs of views, subject to balanced bits (Y^(k) e = 0) and uncorrelated bits
((1/n) Y^(k) Y^(k)T = I). Relaxing sgn and substituting Y^(k) = A^(k)T X^(k) turns this into the
generalised eigenvalue problem  X L' X^T A = lambda X X^T A  (block matrices over the views).

Here the only cross-view similarity is the pairing (W = I: row i of the image features is the
same object as row i of the text features), so for K = 2 views the relaxed problem is

    min_{A_x, A_y}  (1/n) sum_i ||A_x^T x_i - A_y^T y_i||^2
    s.t.  A_x^T C_xx A_x + A_y^T C_yy A_y = I      (uncorrelated, unit-variance relaxed bits)

on centred features (centring gives the balance constraint Y e = 0). Its Lagrangian gives the
generalised symmetric-definite eigenvalue problem solved with ``scipy.linalg.eigh``::

    [ C_xx   -C_xy ] [a_x]           [ C_xx    0  ] [a_x]
    [ -C_yx   C_yy ] [a_y] = lambda  [  0    C_yy ] [a_y]          (eq. CVH)

whose eigenvalues are lambda = 1 -/+ rho with rho the canonical correlations: CVH with W = I is
CCA. The ``bits`` smallest eigenvalues (largest correlations) give the hash directions. For
lambda != 1 each solution splits its unit norm equally between the views
(a_x^T C_xx a_x = a_y^T C_yy a_y = 1/2), so we scale by sqrt(2): each view's projected
training data then has identity (regularised) covariance, i.e. uncorrelated unit-variance bits.
Codes: b = 1[A^T (x - mean_train) >= 0] (sgn with sgn(0) = +1, as 0/1).

Regularisation (not in the paper, needed because C_xx is singular for sparse tag vectors or
when d is close to n): C_kk + reg * (tr(C_kk) / d_k) * I, a ridge relative to the mean
variance so that it does not depend on the feature scale. Default reg = 1 relative to the mean variance. Why not a tiny ridge: with d close to n (openclipart:
1,280-d image features, ~2,000 training pairs) the sample covariance is nearly singular, and a
ridge of 1e-4 lets CVH pick directions of tiny variance that correlate only on the training
pairs (validation mAP@1000 at 32 bits, I->T/T->I: 0.19/0.23 at 1e-4, 0.27/0.30 at 0.1,
0.29/0.31 at 1-3, the plateau, 0.28/0.28 at 10); on the demo reg = 1 is also better than
1e-4 (0.43/0.44 against 0.42/0.40; benchmarks/check_linear_reg.py). A ridge
comparable to the mean variance is the intent of regularised CCA on standardised features:
shrink the covariance towards a multiple of I so that it does not collapse at d ~ n.
The BMC-SDNU Cross-Modal-Hashing-Retrieval benchmark's CVH script (CVH/code/demo_CVH.m) adds
``CVHparam.lambda`` = 1e-4 to X^T X; that value stays in the tune grid (config.yaml
``tune.grid.cvh``).

The centred-projection hash itself is :class:`pipeline.methods.linear.LinearHash`, shared
with CMFH, CCA-ITQ and LSH.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from pipeline.errors import PipelineError
from pipeline.methods.linear import LinearHash, centred_covariances, fix_signs
from pipeline.settings import Settings, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config(Settings):
    """CVH's settings (config.yaml ``method_settings.cvh``)."""

    reg: float = setting(1.0, "ridge on each view's covariance, relative to its mean variance", min=0)


# ============================================================================ CVH
def cvh_directions(cxx: np.ndarray, cyy: np.ndarray, cxy: np.ndarray, bits: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve eq. CVH for the ``bits`` smallest eigenvalues.

    Returns (eigenvalues ascending, a_x (d_x, bits), a_y (d_y, bits)) with the eigenvectors
    normalised as ``scipy.linalg.eigh`` does: [a_x; a_y]^T blockdiag(C_xx, C_yy) [a_x; a_y] = I.
    ``cxx``/``cyy`` must be symmetric positive definite (already regularised).
    """
    dx, dy = cxx.shape[0], cyy.shape[0]
    if not 1 <= bits <= min(dx, dy):
        raise PipelineError(f"cvh: bits ({bits}) must be between 1 and min(d_x, d_y) = {min(dx, dy)}: "
                            f"two views of those dimensions have only that many canonical directions")
    a = np.block([[cxx, -cxy], [-cxy.T, cyy]])
    b = np.block([[cxx, np.zeros((dx, dy))], [np.zeros((dy, dx)), cyy]])
    try:
        evals, vecs = scipy.linalg.eigh(a, b, subset_by_index=[0, bits - 1])
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError) as e:
        raise PipelineError(f"cvh: the generalised eigenproblem failed ({e}); the covariances are not "
                            f"positive definite: raise the reg setting") from None
    return evals, vecs[:dx], vecs[dx:]


class CVH(LinearHash):
    """CVH hash functions for the image (x) and text (y) views."""

    name = "cvh"
    Config = Config
    plot = {"x": "epoch", "columns": ()}  # nothing iterates (a generalised eigenproblem); the log lists the eigenvalues
    variants = {"reg": ("reg",)}
    extra_state = ("eigenvalues",)

    def __init__(self, bits: int, config: Config | dict | None = None) -> None:
        super().__init__(bits, config)
        self.eigenvalues_: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0, device: Any = "cpu",
            progress: bool = False) -> list[dict]:
        """Solve eq. CVH on centred training pairs; history: one row per bit (eigenvalue, rho).

        Deterministic: no random initialisation (``seed`` is unused).
        """
        t0 = time.perf_counter()
        x, y = self._pair(x, y, seed)
        n, dx, dy = len(x), x.shape[1], y.shape[1]
        c = centred_covariances(x, y, self.bits, self.config.reg, "cvh")
        del x, y  # keep one float64 copy of each view at real scale
        mean_x, mean_y, cxx, cyy, cxy = c["mean_x"], c["mean_y"], c["cxx"], c["cyy"], c["cxy"]
        evals, ax, ay = cvh_directions(cxx, cyy, cxy, self.bits)
        ax, ay = fix_signs(ax, ay)
        self.mean_x_, self.mean_y_ = mean_x, mean_y
        self.w_x_, self.w_y_ = math.sqrt(2.0) * ax, math.sqrt(2.0) * ay
        self.eigenvalues_ = evals
        log.info("cvh: %d bits on %d pairs (%d + %d dims) in %.2f s; canonical correlations %.3f..%.3f",
                 self.bits, n, dx, dy, time.perf_counter() - t0, 1 - evals[0], 1 - evals[-1])
        return [{"epoch": i + 1, "bit": i, "eigenvalue": float(ev), "correlation": float(1.0 - ev)}
                for i, ev in enumerate(evals)]
