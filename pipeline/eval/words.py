"""Packed codes and labels as 64-bit words: the layout both ranking engines read.

Plain NumPy (no compiled code), so that code which only prepares inputs, or ranks small sets
with :mod:`pipeline.eval.numpy_kernels`, never imports numba.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError


def words64(packed: np.ndarray) -> np.ndarray:
    """(n, width) uint8 rows as (n, ceil(width / 8)) uint64 words, zero-padded (adds no distance)."""
    p = np.asarray(packed)
    if p.ndim != 2 or p.dtype != np.uint8:
        raise PipelineError(f"packed codes must be a 2-D uint8 array, got {p.dtype} {p.shape}")
    w = p.shape[1]
    if w % 8 or not p.flags.c_contiguous:
        p = np.pad(p, ((0, 0), (0, -w % 8))) if w % 8 else np.ascontiguousarray(p)
    return p.view(np.uint64).reshape(p.shape[0], -1)


def label_words64(labels: np.ndarray) -> np.ndarray:
    """Multi-hot labels (n, classes) as uint64 words: relevant = some word of the AND is non-zero."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise PipelineError(f"labels must be a 2-D (n, classes) array, got shape {lab.shape}")
    return words64(np.packbits(lab.astype(bool), axis=1))
