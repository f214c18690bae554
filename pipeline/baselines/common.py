"""What the linear baselines share: settings and input checks, and the centred-projection hash.

CVH, CMFH and CCA-ITQ all hash a view as ``1[W^T (v - mean) >= 0]`` with W learned on the
training pairs; only how W is learned differs (:mod:`pipeline.baselines.cvh`, ``cmfh``, ``ccaitq``).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
# The same reading of YAML numbers as CMIMH's settings (PyYAML reads 1e-4 as a string).
from pipeline.model.cmimh import _coerce_num, _is_int

log = logging.getLogger(__name__)

ENCODE_BLOCK = 8192
"""Rows encoded per block: bounds the float64 copy of a large database."""


# ============================================================================ shared checks
def merge_settings(name: str, defaults: dict, settings: dict | None) -> dict:
    """``settings`` over a copy of ``defaults``; one-line PipelineError for a non-mapping or an unknown key."""
    settings = {} if settings is None else settings
    if not isinstance(settings, dict):
        raise PipelineError(f"{name} settings must be a mapping, got {type(settings).__name__}")
    unknown = sorted(map(str, set(settings) - set(defaults)))
    if unknown:
        raise PipelineError(f"{name} settings: unknown key(s) {', '.join(unknown)}; "
                            f"known: {', '.join(defaults)}")
    out = copy.deepcopy(defaults)
    out.update(settings)
    return out


def resolve_settings(name: str, defaults: dict, spec: dict, settings: dict | None) -> dict:
    """Merge ``settings`` over ``defaults``; one-line PipelineError for an unknown key or bad value.

    ``spec`` maps key -> (kind, lower bound, inclusive) with kind "float", "int" or "bool"
    (bound None: no bound).
    """
    out = merge_settings(name, defaults, settings)
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
