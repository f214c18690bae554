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
variance so that it does not depend on the feature scale. Default reg = 1e-4, the value of the
``CVHparam.lambda`` ridge in the CVH script of the BMC-SDNU Cross-Modal-Hashing-Retrieval
benchmark (CVH/code/demo_CVH.m), there added to X^T X.

This module also holds :class:`LinearHash` and the input checks shared with
:mod:`pipeline.baselines.cmfh` and :mod:`pipeline.baselines.ccaitq` (all three hash by the sign
of a centred linear projection).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import numpy as np
import scipy.linalg

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

NAME = "cvh"
DEFAULTS: dict[str, Any] = {
    "reg": 1e-4,
}
"""reg: ridge on each view's covariance, relative to its mean variance (see module docstring)."""

_SPEC = {"reg": ("float", 0.0, True)}

ENCODE_BLOCK = 8192
"""Rows encoded per block: bounds the float64 copy of a large database."""


# ============================================================================ shared checks
def _coerce_num(v: Any) -> Any:
    """Accept numeric strings: PyYAML reads ``1e-4`` (no dot) as the string '1e-4'."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def resolve_settings(name: str, defaults: dict, spec: dict, settings: dict | None) -> dict:
    """Merge ``settings`` over ``defaults``; one-line PipelineError for an unknown key or bad value.

    ``spec`` maps key -> (kind, lower bound, inclusive) with kind "float", "int" or "bool"
    (bound None: no bound).
    """
    settings = {} if settings is None else settings
    if not isinstance(settings, dict):
        raise PipelineError(f"{name} settings must be a mapping, got {type(settings).__name__}")
    unknown = sorted(map(str, set(settings) - set(defaults)))
    if unknown:
        raise PipelineError(f"{name} settings: unknown key(s) {', '.join(unknown)}; "
                            f"known: {', '.join(defaults)}")
    out = copy.deepcopy(defaults)
    out.update(settings)
    for key, (kind, lo, inclusive) in spec.items():
        v = out[key]
        if kind == "bool":
            if not isinstance(v, (bool, np.bool_)):
                raise PipelineError(f"{name} settings: {key} must be true or false, got {v!r}")
            out[key] = bool(v)
            continue
        v = _coerce_num(v)
        if kind == "int":
            ok = _is_int(v) or (isinstance(v, float) and v.is_integer())
            v = int(v) if ok else v
        else:
            ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
                and math.isfinite(float(v))
            v = float(v) if ok else v
        if ok and lo is not None:
            ok = v >= lo if inclusive else v > lo
        if not ok:
            bound = "" if lo is None else f" {'>=' if inclusive else '>'} {lo}"
            what = "an integer" if kind == "int" else "a finite number"
            raise PipelineError(f"{name} settings: {key} must be {what}{bound}, got {out[key]!r}")
        out[key] = v
    return out


def check_bits(bits: Any, name: str) -> int:
    if not _is_int(bits) or bits < 1:
        raise PipelineError(f"{name}: bits must be an integer >= 1, got {bits!r}")
    return int(bits)


def _check_finite(arr: np.ndarray, where: str, offset: int | None = None) -> None:
    """Whole array (offset None): count the bad rows; a block at ``offset``: name the first."""
    if arr.size and not np.isfinite(arr).all():
        bad = ~np.isfinite(arr).all(axis=1)
        first = int(np.argmax(bad))
        if offset is None:
            raise PipelineError(f"{where}: NaN/inf in {int(bad.sum())} rows (first row {first})")
        raise PipelineError(f"{where}: NaN/inf in row {offset + first}")


def as_matrix(a: Any, where: str, dim: int | None = None, finite: bool = True) -> np.ndarray:
    """A 2-D float array (its dtype kept when floating), finite unless ``finite`` is False;
    else one line naming ``where``."""
    try:
        arr = np.asarray(a)
    except Exception:  # noqa: BLE001 - ragged lists and the like
        raise PipelineError(f"{where}: not a numeric array") from None
    if arr.ndim != 2:
        raise PipelineError(f"{where}: expected a 2-D (n, d) array, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise PipelineError(f"{where}: expected {dim} columns (as in training), got {arr.shape[1]}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == np.bool_):
        raise PipelineError(f"{where}: expected numbers, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if finite:
        _check_finite(arr, where)
    return arr


def check_pair(x: Any, y: Any, name: str, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs as float64: both 2-D, finite, the same number of rows (>= ``min_rows``)."""
    x = as_matrix(x, f"{name} fit: image features")
    y = as_matrix(y, f"{name} fit: text features")
    if len(x) != len(y):
        raise PipelineError(f"{name} fit: image and text row counts differ ({len(x)} vs {len(y)}); "
                            f"row i of each must be the same pair")
    if len(x) < min_rows:
        raise PipelineError(f"{name} fit: need at least {min_rows} training pairs, got {len(x)}")
    if x.shape[1] < 1 or y.shape[1] < 1:
        raise PipelineError(f"{name} fit: features need at least one column, got {x.shape[1]} and {y.shape[1]}")
    return x.astype(np.float64, copy=False), y.astype(np.float64, copy=False)


def ridge(c: np.ndarray, reg: float, where: str) -> np.ndarray:
    """C + reg * (tr C / d) I: a ridge relative to the mean variance (scale-free)."""
    mean_var = float(np.trace(c)) / c.shape[0]
    if not mean_var > 0:
        raise PipelineError(f"{where}: the features are constant over the training rows")
    return c + (reg * mean_var) * np.eye(c.shape[0])


def fix_signs(*ws: np.ndarray) -> tuple[np.ndarray, ...]:
    """Flip columns jointly so that the largest-|.| entry of the first matrix's column is positive.

    Eigen/singular vectors are defined up to sign; a fixed convention keeps codes reproducible
    across LAPACK builds. All matrices flip together, so cross-view agreement is unchanged.
    """
    idx = np.argmax(np.abs(ws[0]), axis=0)
    s = np.sign(ws[0][idx, np.arange(ws[0].shape[1])])
    s[s == 0] = 1.0
    return tuple(w * s for w in ws)


def state_array(state: dict, key: str, shape: tuple, name: str) -> np.ndarray:
    """A float array of ``state`` with the expected shape (None: any length on that axis)."""
    if key not in state:
        raise PipelineError(f"{name} model state: missing {key!r}")
    a = np.asarray(state[key], dtype=np.float64)
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        raise PipelineError(f"{name} model state: {key} has shape {a.shape}, expected {shape}")
    return a


# ============================================================================ linear hash base
class LinearHash:
    """Codes b = 1[(v - mean_v) W_v >= 0] for both views; subclasses implement ``fit``.

    The model is numpy-only on the CPU; ``device`` is accepted for the common interface.
    """

    NAME = "linear"
    DEFAULTS: dict[str, Any] = {}
    SPEC: dict[str, tuple] = {}
    FORMAT_VERSION = 1

    def __init__(self, bits: int, settings: dict | None = None, seed: int = 0, device: str = "cpu") -> None:
        self.bits = check_bits(bits, self.NAME)
        self.settings = resolve_settings(self.NAME, self.DEFAULTS, self.SPEC, settings)
        if not _is_int(seed):
            raise PipelineError(f"{self.NAME}: seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        self.device = str(device)
        self.mean_x: np.ndarray | None = None
        self.mean_y: np.ndarray | None = None
        self.w_x: np.ndarray | None = None
        self.w_y: np.ndarray | None = None

    # ------------------------------------------------------------------ encoding
    @property
    def fitted(self) -> bool:
        return self.w_x is not None

    def _encode(self, a: Any, mean: np.ndarray | None, w: np.ndarray | None, where: str) -> np.ndarray:
        if mean is None or w is None:
            raise PipelineError(f"{self.NAME} {where}: the model is not fitted")
        arr = as_matrix(a, f"{self.NAME} {where}", dim=w.shape[0], finite=False)
        out = np.empty((len(arr), self.bits), dtype=np.uint8)
        for s in range(0, len(arr), ENCODE_BLOCK):
            blk = arr[s:s + ENCODE_BLOCK].astype(np.float64)
            _check_finite(blk, f"{self.NAME} {where}", offset=s)  # per block: no m x d mask
            blk -= mean
            out[s:s + ENCODE_BLOCK] = (blk @ w >= 0)
        return out

    def encode_image(self, x: np.ndarray) -> np.ndarray:
        """(m, bits) uint8 0/1 codes of image features (deterministic)."""
        return self._encode(x, self.mean_x, self.w_x, "encode_image")

    def encode_text(self, y: np.ndarray) -> np.ndarray:
        """(m, bits) uint8 0/1 codes of text features (deterministic)."""
        return self._encode(y, self.mean_y, self.w_y, "encode_text")

    # ------------------------------------------------------------------ persistence
    def _extra_state(self) -> dict:
        return {}

    def _load_extra(self, state: dict) -> None:
        pass

    def state(self) -> dict:
        """Everything needed to rebuild the fitted model (JSON-able values and numpy arrays)."""
        if not self.fitted:
            raise PipelineError(f"{self.NAME}: cannot save an unfitted model")
        return {"format": f"{self.NAME}/{self.FORMAT_VERSION}", "bits": self.bits, "seed": self.seed,
                "settings": copy.deepcopy(self.settings), "mean_x": self.mean_x, "mean_y": self.mean_y,
                "w_x": self.w_x, "w_y": self.w_y, **self._extra_state()}

    @classmethod
    def from_state(cls, state: dict) -> "LinearHash":
        """Rebuild a fitted model from :meth:`state`; a foreign or damaged state is one line."""
        name = cls.NAME
        if not isinstance(state, dict):
            raise PipelineError(f"{name} model state must be a mapping, got {type(state).__name__}")
        want = f"{name}/{cls.FORMAT_VERSION}"
        if state.get("format") != want:
            raise PipelineError(f"{name} model state: format {state.get('format')!r}, expected {want!r}")
        m = cls(state.get("bits"), state.get("settings"), state.get("seed", 0))
        w_x = state_array(state, "w_x", (None, m.bits), name)
        w_y = state_array(state, "w_y", (None, m.bits), name)
        m.mean_x = state_array(state, "mean_x", (w_x.shape[0],), name)
        m.mean_y = state_array(state, "mean_y", (w_y.shape[0],), name)
        m.w_x, m.w_y = w_x, w_y
        m._load_extra(state)
        return m


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


class Model(LinearHash):
    """CVH hash functions for the image (x) and text (y) views."""

    NAME = NAME
    DEFAULTS = DEFAULTS
    SPEC = _SPEC

    def __init__(self, bits: int, settings: dict | None = None, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(bits, settings, seed, device)
        self.eigenvalues: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray, progress: bool = False) -> list[dict]:
        """Solve eq. CVH on centred training pairs; history: one row per bit (eigenvalue, rho).

        Deterministic: no random initialisation (``seed`` is unused).
        """
        t0 = time.perf_counter()
        x, y = check_pair(x, y, NAME)
        n, dx, dy = len(x), x.shape[1], y.shape[1]
        if self.bits > min(dx, dy):
            raise PipelineError(f"cvh: bits ({self.bits}) must be at most min(d_x, d_y) = {min(dx, dy)}: "
                                f"two views of those dimensions have only that many canonical directions")
        mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - mean_x, y - mean_y
        del x, y  # keep one float64 copy of each view at real scale
        reg = self.settings["reg"]
        cxx = ridge(xc.T @ xc / n, reg, "cvh fit: image features")
        cyy = ridge(yc.T @ yc / n, reg, "cvh fit: text features")
        cxy = xc.T @ yc / n
        evals, ax, ay = cvh_directions(cxx, cyy, cxy, self.bits)
        ax, ay = fix_signs(ax, ay)
        self.mean_x, self.mean_y = mean_x, mean_y
        self.w_x, self.w_y = math.sqrt(2.0) * ax, math.sqrt(2.0) * ay
        self.eigenvalues = evals
        secs = time.perf_counter() - t0
        log.info("cvh: %d bits on %d pairs (%d + %d dims) in %.2f s; canonical correlations %.3f..%.3f",
                 self.bits, n, dx, dy, secs, 1 - evals[0], 1 - evals[-1])
        return [{"epoch": i + 1, "bit": i, "eigenvalue": float(ev), "correlation": float(1.0 - ev),
                 "seconds": secs} for i, ev in enumerate(evals)]

    def _extra_state(self) -> dict:
        return {"eigenvalues": self.eigenvalues}

    def _load_extra(self, state: dict) -> None:
        if state.get("eigenvalues") is not None:
            self.eigenvalues = state_array(state, "eigenvalues", (self.bits,), NAME)
