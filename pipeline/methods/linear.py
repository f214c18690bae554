"""What the linear methods share: the centred-projection hash and its numerics.

CVH, CMFH, CCA-ITQ and LSH all hash a view as ``1[(v - mean_v) W_v >= 0]`` with W learned (or,
for LSH, drawn) from the training pairs; only how W is found differs. The model is NumPy-only
on the CPU (``device`` is accepted for the common interface); learned attributes end with ``_``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.methods.base import Hasher, check_features

log = logging.getLogger(__name__)

ENCODE_BLOCK = 8192
"""Rows encoded per block: bounds the float64 copy of a large database."""


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


def centred_covariances(x: np.ndarray, y: np.ndarray, bits: int, reg: float, name: str) -> dict:
    """What CCA-like methods start from: the views' training means, the centred views, and their
    ridged auto-covariances and cross-covariance (``bits`` at most min(d_x, d_y): two views of
    those dimensions have only that many canonical directions)."""
    n, dx, dy = len(x), x.shape[1], y.shape[1]
    if bits > min(dx, dy):
        raise PipelineError(f"{name}: bits ({bits}) must be at most min(d_x, d_y) = {min(dx, dy)}: "
                            f"two views of those dimensions have only that many canonical directions")
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mean_x, y - mean_y
    return {"n": n, "mean_x": mean_x, "mean_y": mean_y, "xc": xc, "yc": yc,
            "cxx": ridge(xc.T @ xc / n, reg, f"{name} fit: image features"),
            "cyy": ridge(yc.T @ yc / n, reg, f"{name} fit: text features"), "cxy": xc.T @ yc / n}


class LinearHash(Hasher):
    """Codes b = 1[(v - mean_v) W_v >= 0] for both views; subclasses implement :meth:`fit`
    (setting ``mean_x_``, ``mean_y_``, ``w_x_``, ``w_y_``) and may keep more learned arrays,
    listed in ``extra_state`` (saved and restored with the model)."""

    extra_state: tuple[str, ...] = ()

    def __init__(self, bits: int, config: Any = None) -> None:
        super().__init__(bits, config)
        self.mean_x_: np.ndarray | None = None
        self.mean_y_: np.ndarray | None = None
        self.w_x_: np.ndarray | None = None
        self.w_y_: np.ndarray | None = None

    def _pair(self, x: Any, y: Any, seed: Any = 0, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Training pairs as float64 (see :func:`pipeline.methods.base.check_pair`); the seed checked."""
        from pipeline.methods.base import check_pair, check_seed

        check_seed(seed, self.name)
        return check_pair(x, y, self.name, min_rows=min_rows, dtype=np.float64)

    def _feature_blocks(self, a: Any, dim: int, where: str):
        """``(len(a), blocks)``: a fitted model's input ``a`` checked (a numeric 2-D array of
        ``dim`` columns, finite) block by block, each block ``(start, float64 rows)`` — no n x d
        float64 copy, no n x d mask. The caller checks that the model is fitted first."""
        try:
            arr = np.asarray(a)
        except Exception:  # noqa: BLE001
            raise PipelineError(f"{self.name} {where}: not a numeric array") from None
        if arr.ndim != 2 or arr.shape[1] != dim:
            check_features(arr, f"{self.name} {where}", dim=dim, min_rows=0)
        blocks = ((s, check_features(arr[s:s + ENCODE_BLOCK], f"{self.name} {where}", dim=dim, min_rows=0,
                                     allow_bool=True, dtype=np.float64, row_offset=s))
                  for s in range(0, len(arr), ENCODE_BLOCK))
        return len(arr), blocks

    def _encode(self, a: Any, mean: np.ndarray | None, w: np.ndarray | None, where: str) -> np.ndarray:
        self._require_fitted(where)
        n, blocks = self._feature_blocks(a, w.shape[0], where)
        out = np.empty((n, self.bits), dtype=np.uint8)
        for s, blk in blocks:
            out[s:s + ENCODE_BLOCK] = ((blk - mean) @ w >= 0)
        return out

    def _embed(self, a: Any, mean: np.ndarray | None, w: np.ndarray | None, where: str) -> np.ndarray:
        self._require_fitted(where)
        out = np.empty((len(a), self.bits), dtype=np.float32)
        for s in range(0, len(a), ENCODE_BLOCK):
            blk = check_features(a[s:s + ENCODE_BLOCK], f"{self.name} {where}", dim=w.shape[0], min_rows=0,
                                 allow_bool=True, dtype=np.float64, row_offset=s)
            out[s:s + ENCODE_BLOCK] = (blk - mean) @ w
        return out

    def embed_image(self, x: np.ndarray) -> np.ndarray:
        """The projections (x - mean_x) W_x that the image codes are the signs of."""
        return self._embed(x, self.mean_x_, self.w_x_, "embed_image")

    def embed_text(self, y: np.ndarray) -> np.ndarray:
        """The projections (y - mean_y) W_y that the text codes are the signs of."""
        return self._embed(y, self.mean_y_, self.w_y_, "embed_text")

    def encode_image(self, x: np.ndarray) -> np.ndarray:
        """(m, bits) uint8 0/1 codes of image features (deterministic)."""
        return self._encode(x, self.mean_x_, self.w_x_, "encode_image")

    def encode_text(self, y: np.ndarray) -> np.ndarray:
        """(m, bits) uint8 0/1 codes of text features (deterministic)."""
        return self._encode(y, self.mean_y_, self.w_y_, "encode_text")

    def state(self) -> dict:
        """The learned arrays: means, projections and ``extra_state``."""
        self._require_fitted("state")
        return {k: getattr(self, f"{k}_") for k in ("mean_x", "mean_y", "w_x", "w_y", *self.extra_state)}

    @classmethod
    def from_state(cls, bits: int, config: Any, state: dict, device: Any = "cpu") -> "LinearHash":
        """Rebuild a fitted model from :meth:`state`; a damaged state is one line."""
        m = cls(bits, config)
        if not isinstance(state, dict):
            raise PipelineError(f"{m.name} model state must be a mapping, got {type(state).__name__}")
        m.w_x_ = state_array(state, "w_x", (None, m.bits), m.name)
        m.w_y_ = state_array(state, "w_y", (None, m.bits), m.name)
        m.mean_x_ = state_array(state, "mean_x", (m.w_x_.shape[0],), m.name)
        m.mean_y_ = state_array(state, "mean_y", (m.w_y_.shape[0],), m.name)
        for k in cls.extra_state:
            if state.get(k) is not None:
                setattr(m, f"{k}_", np.asarray(state[k], dtype=np.float64))
        return m
