"""CCA-ITQ (Gong, Lazebnik, Gordo & Perronnin, "Iterative Quantization: A Procrustean Approach
to Learning Binary Codes for Large-Scale Image Retrieval", IEEE TPAMI 35(12), 2013, section on
CCA-ITQ), used cross-modally as in the CMIMH paper's baselines: the second CCA view is the other
modality (text) instead of Gong et al.'s label vectors.

1. CCA between the centred views (regularised; :func:`cca`). With L_x L_x^T = C_xx + r_x I and
   L_y L_y^T = C_yy + r_y I (Cholesky), the SVD  L_x^{-1} C_xy L_y^{-T} = U S W^T  gives the
   canonical directions W_x = L_x^{-T} U, W_y = L_y^{-T} W and correlations rho = diag(S);
   the top ``bits`` are kept, so W_x^T C_xx W_x = W_y^T C_yy W_y = I (regularised).
2. Eigenvalue scaling (the CCA-ITQ branch of Gong et al.'s released demo, as copied in
   ``hashCalculator.m`` files: ``eigenvector(:,1:bit)*diag(r(1:bit))``, "a scaling using
   eigenvalues"): both views' projections are multiplied by rho^p, ``eig_power`` p = 1
   (0 switches it off; the multi-view CCA code of Gong, Ke, Isard & Lazebnik's multi-view
   embedding says "set power to be 2, 3, or 4").
   Scaling by the correlation makes weakly shared directions matter less to the rotation.
3. ITQ (:func:`itq`): one orthogonal rotation R minimising the quantisation loss
   Q(B, R) = ||B - V R||_F^2, B in {-1, 1}, on V = [X_c W_x diag(rho^p); Y_c W_y diag(rho^p)],
   the stacked projected training rows of both views (2n x bits), so that both views share the
   rotation and stay comparable. Alternating, as in Gong et al.:
   B = sgn(V R); then R = U_m W_m^T from the SVD V^T B = U_m S W_m^T (orthogonal Procrustes).
   50 iterations (Gong et al.'s setting) from a seeded random orthogonal R (U of the SVD of a
   Gaussian matrix, as in their code). Each step lowers Q, but the result is a local optimum:
   on exactly rotated binary data in 5 dimensions, some random starts stop at a rotation that
   mixes bits pairwise (tests/test_baselines_ccaitq.py).
4. Codes: b = 1[(v - mean_train) W_v diag(rho^p) R >= 0] (sgn with sgn(0) = +1, as 0/1).

Regularisation: C_kk + reg * (tr(C_kk) / d_k) I, default reg = 1 relative to the mean variance. Why not a tiny ridge: with d close to n (openclipart:
1,280-d image features, ~2,000 training pairs) the sample covariance is nearly singular, and a
ridge of 1e-4 lets CCA pick directions of tiny variance that correlate only on the training
pairs (validation mAP@1000 at 32 bits, I->T/T->I: 0.20/0.25 at 1e-4, 0.36/0.42 at 0.1,
0.43/0.46 at 1, 0.45-0.46/0.47-0.48 at 3-10, the plateau); on the demo reg = 1 is also
better than 1e-4 (0.60/0.59 against 0.48/0.46; benchmarks/check_linear_reg.py). A ridge
comparable to the mean variance is the intent of regularised CCA on standardised features:
shrink the covariance towards a multiple of I so that it does not collapse at d ~ n.
Gong et al.'s demo calls ``cca(X, Y, 0.0001)``, an absolute 1e-4 ridge on the covariance of
their features (fitted there on many more rows than dimensions); it is in the tune grid
(config.yaml ``tune.grid.ccaitq``) with 1, 3 and 10.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.methods.linear import LinearHash, centred_covariances, fix_signs
from pipeline.settings import Settings, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config(Settings):
    """CCA-ITQ's settings (config.yaml ``method_settings.ccaitq``)."""

    reg: float = setting(1.0, "ridge on each view's covariance, relative to its mean variance", min=0)
    eig_power: float = setting(1.0, "p of the rho^p scaling of the CCA directions (0: none)", min=0)
    iterations: int = setting(50, "ITQ iterations (Gong et al.: 50)", min=1)


def cca(cxx: np.ndarray, cyy: np.ndarray, cxy: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` canonical directions (W_x, W_y) and correlations rho (descending) by whitening + SVD.

    ``cxx``/``cyy`` must be symmetric positive definite (already regularised). The directions
    satisfy W_x^T C_xx W_x = W_y^T C_yy W_y = I and W_x^T C_xy W_y = diag(rho).
    """
    try:
        lx = scipy.linalg.cholesky(cxx, lower=True)
        ly = scipy.linalg.cholesky(cyy, lower=True)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        raise PipelineError("ccaitq: a covariance matrix is not positive definite: raise the reg setting") from None
    kx = scipy.linalg.solve_triangular(lx, cxy, lower=True)              # L_x^{-1} C_xy
    kxy = scipy.linalg.solve_triangular(ly, kx.T, lower=True).T          # ... L_y^{-T}
    u, s, vt = scipy.linalg.svd(kxy, full_matrices=False)
    wx = scipy.linalg.solve_triangular(lx.T, u[:, :k], lower=False)
    wy = scipy.linalg.solve_triangular(ly.T, vt[:k].T, lower=False)
    return wx, wy, s[:k]


def random_rotation(c: int, rng: np.random.Generator) -> np.ndarray:
    """A random c x c orthogonal matrix: U of the SVD of a Gaussian matrix (Gong et al.'s init)."""
    u, _, _ = np.linalg.svd(rng.standard_normal((c, c)))
    return u


def quantization_loss(v: np.ndarray, r: np.ndarray) -> float:
    """Q = ||sgn(V R) - V R||_F^2 with sgn(0) = +1 (the B that minimises Q for this R)."""
    z = v @ r
    return float(((np.where(z >= 0, 1.0, -1.0) - z) ** 2).sum())


def itq(v: np.ndarray, iterations: int, rng: np.random.Generator, progress: bool = False,
        r0: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
    """ITQ's alternating minimisation of ||B - V R||_F^2; returns (R, history).

    One iteration = B step (B = sgn(V R)) then R step (Procrustes). History row t holds
    ``quant_loss`` = ||B_t - V R_t||_F^2 after iteration t; row 0 is the start,
    sgn(V R_0) against V R_0. Each step can only lower Q, so the losses never increase.
    """
    c = v.shape[1]
    r = random_rotation(c, rng) if r0 is None else np.array(r0, dtype=np.float64)
    hist = [{"epoch": 0, "quant_loss": quantization_loss(v, r)}]
    for t in tqdm(range(1, iterations + 1), desc="ccaitq ITQ", disable=not progress, leave=False):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        um, _, wmt = np.linalg.svd(v.T @ b)
        r = um @ wmt
        hist.append({"epoch": t, "quant_loss": float(((b - v @ r) ** 2).sum())})
    return r, hist


class CCAITQ(LinearHash):
    """CCA-ITQ hash functions for the image (x) and text (y) views."""

    name = "ccaitq"
    Config = Config
    plot = {"x": "ITQ iteration", "columns": ("quant_loss",)}  # the quantisation loss ||B - VR||^2 it minimises
    variants = {"reg": ("reg",), "power": ("eig_power",)}
    extra_state = ("correlations", "rotation")

    def __init__(self, bits: int, config: Config | dict | None = None) -> None:
        super().__init__(bits, config)
        self.correlations_: np.ndarray | None = None
        self.rotation_: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0, device: Any = "cpu",
            progress: bool = False) -> list[dict]:
        """CCA, rho^p scaling, ITQ on the stacked views; history: the ITQ loss per iteration."""
        t0 = time.perf_counter()
        x, y = self._pair(x, y, seed)
        cov = centred_covariances(x, y, self.bits, self.config.reg, "ccaitq")
        del x, y  # keep one float64 copy of each view at real scale
        n, mean_x, mean_y, xc, yc = cov["n"], cov["mean_x"], cov["mean_y"], cov["xc"], cov["yc"]
        c = self.config
        wx, wy, rho = cca(cov["cxx"], cov["cyy"], cov["cxy"], self.bits)
        wx, wy = fix_signs(wx, wy)
        scale = np.clip(rho, 0.0, None) ** c.eig_power
        wx, wy = wx * scale, wy * scale
        v = np.vstack([xc @ wx, yc @ wy])
        r, hist = itq(v, c.iterations, np.random.default_rng(int(seed)), progress=progress)
        self.mean_x_, self.mean_y_ = mean_x, mean_y
        self.w_x_, self.w_y_ = wx @ r, wy @ r
        self.correlations_, self.rotation_ = rho, r
        log.info("ccaitq: %d bits on %d pairs in %.2f s; rho %.3f..%.3f; ITQ loss %.4g -> %.4g",
                 self.bits, n, time.perf_counter() - t0, rho[0], rho[-1], hist[0]["quant_loss"],
                 hist[-1]["quant_loss"])
        for row in hist:
            row["quant_loss_per_entry"] = row["quant_loss"] / v.size
        return hist
