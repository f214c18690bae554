"""CMFH: Collective Matrix Factorization Hashing (Ding, Guo & Zhou, "Collective Matrix
Factorization Hashing for Multimodal Data", CVPR 2014; extended in Ding, Guo, Zhou & Gao,
"Large-Scale Cross-Modality Search via Collective Matrix Factorization Hashing", IEEE TIP 2016),
unsupervised version.

With X1 (d_x x n) and X2 (d_y x n) the centred training features (columns = pairs), the latent
representation V (k x n, k = bits) shared by the two modalities, the factor matrices U_m
(d_m x k) and the hash projections P_m (k x d_m):

    min  J = lam ||X1 - U1 V||^2 + (1 - lam) ||X2 - U2 V||^2
             + mu (||V - P1 X1||^2 + ||V - P2 X2||^2)
             + gamma (||U1||^2 + ||U2||^2 + ||P1||^2 + ||P2||^2 + ||V||^2)     (eq. CMFH)

(Frobenius norms). Every block has a closed-form minimiser given the others (setting the
gradient to zero), applied in the authors' order U, V, P:

    U1 = X1 V^T (V V^T + (gamma/lam) I)^{-1},   U2 = X2 V^T (V V^T + (gamma/(1-lam)) I)^{-1}
    V  = (lam U1^T U1 + (1-lam) U2^T U2 + (2 mu + gamma) I)^{-1}
         (lam U1^T X1 + (1-lam) U2^T X2 + mu (P1 X1 + P2 X2))
    P_m = V X_m^T (X_m X_m^T + (gamma/mu) I)^{-1}

so J never increases. Stop after ``max_iter`` iterations or once the relative decrease
(J_{t-1} - J_t) / J_{t-1} <= ``tol`` (the authors' solveCMFH.m, version 1.0, stops on an
absolute decrease < 0.01, which depends on the data scale and took hundreds of iterations
in our runs; J is invariant to rotations of the latent space, so late iterations mostly
rotate V, P and U together). Initialisation as the authors' code: V, P1, P2 uniform on
[0, 1) (seeded); U is computed first.

Hash functions (out of sample): h_m(x) = sgn(P_m x - mean), thresholded at the training mean of
the projections: the features are centred with the training means mu_m (stored), so
P_m (x - mu_m) has zero mean over the training rows and the code is b = 1[P_m (x - mu_m) >= 0]
(sgn(0) = +1, as 0/1). Each modality is encoded from its own features; the unified training
codes sgn(V) are not needed (database items are encoded per modality, as in the BMC-SDNU
benchmark's CMFH_compress1.m).

Defaults lam = 0.5, mu = 100, gamma = 0.01: the values used for CMFH in the BMC-SDNU
Cross-Modal-Hashing-Retrieval benchmark (CMFH/code/demo_CMFH.m: alphas = [0.5 0.5], i.e. equal
modality weights, lam = 0.5; mu = 100; gamma = 0.01), which we take to be the authors' settings (the CVPR/TIP text itself could not be
retrieved to confirm them here).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.linalg
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.methods.linear import LinearHash
from pipeline.settings import Settings, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config(Settings):
    """CMFH's settings (config.yaml ``method_settings.cmfh``)."""

    lam: float = setting(0.5, "weight of the image reconstruction (1 - lambda: text), in (0, 1)",
                         min=0, max=1, min_exclusive=True, max_exclusive=True, key="lambda")
    mu: float = setting(100.0, "weight of the projection terms", min=0, min_exclusive=True)
    gamma: float = setting(0.01, "Frobenius regularisation", min=0, min_exclusive=True)
    max_iter: int = setting(100, "iterations at most", min=1)
    tol: float = setting(1e-4, "stop when the objective's relative decrease is at most this", min=0)


def _sym_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a^{-1} b for symmetric positive definite a."""
    return scipy.linalg.solve(a, b, assume_a="pos")


def solve_cmfh(x1: np.ndarray, x2: np.ndarray, bits: int, lam: float, mu: float, gamma: float,
               max_iter: int, tol: float, rng: np.random.Generator, progress: bool = False,
               callback: Callable[[int, dict], None] | None = None) -> tuple[dict, list[dict]]:
    """Alternating closed-form updates of eq. CMFH on column-sample matrices x1 (d_x, n), x2 (d_y, n).

    Returns (factors {U1, U2, P1, P2, V}, history rows {epoch, objective, rec_x, rec_y, proj_x,
    proj_y, reg}). ``callback(t, factors)`` sees the factors after every iteration t.
    The objective is evaluated from Gram matrices (no d x n residual is formed).
    """
    dx, n = x1.shape
    dy = x2.shape[0]
    k = bits
    eye = np.eye(k)
    v = rng.random((k, n))
    p1 = rng.random((k, dx))
    p2 = rng.random((k, dy))
    g1 = x1 @ x1.T                              # X1 X1^T, fixed
    g2 = x2 @ x2.T
    c1 = scipy.linalg.cho_factor(g1 + (gamma / mu) * np.eye(dx))
    c2 = scipy.linalg.cho_factor(g2 + (gamma / mu) * np.eye(dy))
    sq1, sq2 = float(np.sum(x1 * x1)), float(np.sum(x2 * x2))
    x1v, x2v = x1 @ v.T, x2 @ v.T               # X_m V^T for the current V
    hist: list[dict] = []
    prev = np.inf
    t0 = time.perf_counter()
    for t in tqdm(range(1, max_iter + 1), desc="cmfh", disable=not progress, leave=False):
        vv = v @ v.T
        u1 = _sym_solve(vv + (gamma / lam) * eye, x1v.T).T
        u2 = _sym_solve(vv + (gamma / (1 - lam)) * eye, x2v.T).T
        lhs = lam * (u1.T @ u1) + (1 - lam) * (u2.T @ u2) + (2 * mu + gamma) * eye
        rhs = (lam * u1 + mu * p1.T).T @ x1 + ((1 - lam) * u2 + mu * p2.T).T @ x2
        v = _sym_solve(lhs, rhs)
        x1v, x2v = x1 @ v.T, x2 @ v.T
        p1 = scipy.linalg.cho_solve(c1, x1v).T
        p2 = scipy.linalg.cho_solve(c2, x2v).T
        # objective from Gram matrices: ||A - BC||^2 = ||A||^2 - 2 tr(B^T A C^T) + tr(B^T B C C^T)
        vv = v @ v.T
        rec_x = sq1 - 2 * np.sum(u1 * x1v) + np.sum((u1.T @ u1) * vv)
        rec_y = sq2 - 2 * np.sum(u2 * x2v) + np.sum((u2.T @ u2) * vv)
        proj_x = np.trace(vv) - 2 * np.sum(p1.T * x1v) + np.sum((p1 @ g1) * p1)
        proj_y = np.trace(vv) - 2 * np.sum(p2.T * x2v) + np.sum((p2 @ g2) * p2)
        reg = sum(float(np.sum(m * m)) for m in (u1, u2, p1, p2)) + float(np.trace(vv))
        obj = lam * rec_x + (1 - lam) * rec_y + mu * (proj_x + proj_y) + gamma * reg
        if not np.isfinite(obj):
            raise PipelineError(f"cmfh: the objective became {obj} at iteration {t}; check the features' scale")
        hist.append({"epoch": t, "objective": float(obj), "rec_x": float(rec_x), "rec_y": float(rec_y),
                     "proj_x": float(proj_x), "proj_y": float(proj_y), "reg": float(reg),
                     "seconds": time.perf_counter() - t0})
        factors = {"U1": u1, "U2": u2, "P1": p1, "P2": p2, "V": v}
        if callback is not None:
            callback(t, factors)
        if np.isfinite(prev) and (prev - obj) <= tol * abs(prev):
            break
        prev = obj
    return {"U1": u1, "U2": u2, "P1": p1, "P2": p2, "V": v}, hist


class CMFH(LinearHash):
    """CMFH hash functions for the image (x) and text (y) views."""

    name = "cmfh"
    Config = Config
    plot = {"x": "iteration", "columns": ("objective", "rec_x", "rec_y", "proj_x", "proj_y", "reg")}
    variants = {"lambda": ("lambda",), "mu": ("mu",), "gamma": ("gamma",)}

    def __init__(self, bits: int, config: Config | dict | None = None) -> None:
        super().__init__(bits, config)
        self.factors: dict | None = None
        """U1, U2, P1, P2, V of the last fit (not saved: V is k x n_train)."""

    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0, device: Any = "cpu",
            progress: bool = False) -> list[dict]:
        """Solve eq. CMFH on the centred training pairs; history: the objective per iteration."""
        t0 = time.perf_counter()
        x, y = self._pair(x, y, seed)
        c = self.config
        mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
        x1, x2 = (x - mean_x).T, (y - mean_y).T
        del x, y  # keep one float64 copy of each view at real scale
        rng = np.random.default_rng(int(seed))
        f, hist = solve_cmfh(x1, x2, self.bits, c.lam, c.mu, c.gamma, c.max_iter, c.tol, rng, progress=progress)
        self.mean_x_, self.mean_y_ = mean_x, mean_y
        self.w_x_, self.w_y_ = f["P1"].T.copy(), f["P2"].T.copy()
        self.factors = f
        log.info("cmfh: %d bits on %d pairs, %d iterations in %.2f s; objective %.6g -> %.6g",
                 self.bits, x1.shape[1], len(hist), time.perf_counter() - t0, hist[0]["objective"],
                 hist[-1]["objective"])
        return hist
