"""PCA of the image features, fitted on the training split in bounded memory, and chunked reads
of HDF5 rows (``image.h5`` holds n x 4,096 FC7 floats: 3 GB for NUS-WIDE, never loaded whole)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.errors import PipelineError

READ_CHUNK_ROWS = 4096  # rows per read when fitting, projecting, merging, copying (64 MiB of FC7)


def read_rows(x, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` for increasing distinct ``rows`` of an array or an HDF5 dataset.

    Dense rows are read as one block and selected in memory (one sequential read); sparse ones
    (a training split scattered over 187k rows) by HDF5 point selection.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros((0, *x.shape[1:]), dtype=x.dtype)
    if isinstance(x, np.ndarray):
        return x[rows]
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo <= 2 * len(rows):
        return x[lo:hi][rows - lo]
    return x[rows]


def read_rows_chunked(x, rows: np.ndarray, fn: Callable[[np.ndarray], np.ndarray] | None = None,
                      chunk_rows: int = READ_CHUNK_ROWS) -> np.ndarray:
    """``fn(x[rows])`` computed ``chunk_rows`` rows at a time, in the order of ``rows`` (distinct)."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    if len(srt) > 1 and not (np.diff(srt) > 0).all():
        raise ValueError("read_rows_chunked: rows must be distinct")
    out = None
    for s in range(0, len(srt), chunk_rows):
        y = read_rows(x, srt[s:s + chunk_rows])
        y = fn(y) if fn is not None else y
        if out is None:
            out = np.empty((len(rows), *y.shape[1:]), dtype=y.dtype)
        out[order[s:s + chunk_rows]] = y
    if out is None:
        y = fn(read_rows(x, srt)) if fn is not None else read_rows(x, srt)
        out = y
    return out


def fit_pca(x, train: np.ndarray, dim: int, seed: int = 0, chunk_rows: int = READ_CHUNK_ROWS,
            progress: bool = False) -> dict:
    """Exact PCA of the rows ``train`` of ``x`` (an array or an HDF5 dataset), in bounded memory.

    More training rows than dimensions (the paper's 5,000 x 4,096, or more): one pass streams
    the rows ``chunk_rows`` at a time into the float64 covariance matrix (shifted by the first
    chunk's mean against cancellation), whose top ``dim`` eigenvectors LAPACK computes exactly.
    At most as many rows as dimensions (the demo): an SVD of those rows, which take no more
    memory than the covariance would. Either way memory is O(d^2) (128 MiB for d = 4,096)
    whatever the number of rows, the result is the exact PCA (sklearn's ``PCA(svd_solver="full")``
    up to rounding) and does not depend on the chunking; there is no randomness (``seed`` is
    accepted for the interface). Why not IncrementalPCA (Ross et al., IJCV 2008): it is
    approximate beyond its first batch, and each batch is an SVD of (dim + batch) x d. Measured
    on 2 CPU cores, 117,000 x 4,096 rows to 1,024 (benchmarks/bench_extract.py): this fit 29 s
    and +478 MiB, IncrementalPCA (8,192-row batches) 396 s and +1,824 MiB; on a 5,000-row
    training split 9 s vs 14 s. Signs: the largest entry of each component is positive
    (sklearn's ``svd_flip`` convention), so reruns agree.
    """
    from scipy import linalg
    from tqdm import tqdm

    train = np.sort(np.asarray(train, dtype=np.int64))
    n, d = len(train), int(x.shape[1])
    if not 1 <= dim <= min(n, d) or n < 2:
        raise PipelineError(f"image_features.pca_dim={dim} must be between 1 and "
                            f"min(n_train={n}, {d}), with at least 2 training rows")
    if n <= d:
        xt = read_rows(x, train).astype(np.float64)
        mean = xt.mean(0)
        xt -= mean
        _, sv, vt = linalg.svd(xt, full_matrices=False, check_finite=False)
        var, comps, total = sv[:dim] ** 2 / (n - 1), vt[:dim], float((sv ** 2).sum() / (n - 1))
    else:
        cov = np.zeros((d, d))
        acc = np.zeros(d)
        shift = None
        for s in tqdm(range(0, n, chunk_rows), desc="pca", unit="chunk", disable=not progress):
            y = read_rows(x, train[s:s + chunk_rows]).astype(np.float64)
            if shift is None:
                shift = y.mean(0)
            y -= shift
            acc += y.sum(0)
            cov += y.T @ y
        m = acc / n
        cov -= n * np.outer(m, m)
        cov /= n - 1
        mean, total = shift + m, float(np.trace(cov))
        w, v = linalg.eigh(cov, subset_by_index=[d - dim, d - 1], overwrite_a=True, check_finite=False)
        var, comps = w[::-1], v[:, ::-1].T
    comps = comps * np.sign(comps[np.arange(dim), np.abs(comps).argmax(1)])[:, None]
    return {"components": comps.astype(np.float32), "mean": mean.astype(np.float32),
            "explained_variance_ratio": (var / total).astype(np.float32)}


def apply_pca(x: np.ndarray, pca: dict) -> np.ndarray:
    """Project rows with a stored PCA (also used to encode new query images)."""
    return ((x - pca["mean"]) @ pca["components"].T).astype(np.float32)


def apply_pca_rows(x, rows: np.ndarray, pca: dict, chunk_rows: int = READ_CHUNK_ROWS) -> np.ndarray:
    """:func:`apply_pca` of ``x[rows]``, read and projected ``chunk_rows`` rows at a time."""
    return read_rows_chunked(x, rows, lambda y: apply_pca(y, pca), chunk_rows)
