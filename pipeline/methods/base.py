"""The one interface every hashing method implements, and what methods share.

:class:`Hasher` is the contract between the methods and the stages (train, encode, search,
tune): a method is constructed from its code length and its typed settings (``Config``, a
:class:`pipeline.settings.Settings` dataclass), learns in :meth:`Hasher.fit`, encodes each
modality to 0/1 codes, and round-trips through :meth:`Hasher.state` / :meth:`Hasher.from_state`.
Learned attributes end with an underscore (scikit-learn's convention), so ``fitted`` is one
check. One ``model.pt`` format serves every method (:func:`save_model`, :func:`load_model`), and
one CSV writer every training history (:func:`write_history`).

Also here: the input checks shared by all methods (:func:`check_features`, :func:`check_pair`),
the training-split z-scoring (:func:`zscore_stats`) and Table II's Corr MSE (:func:`corr_mse`).
"""

from __future__ import annotations

import csv
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import atomic_output, save_torch, to_jsonable, without_timings
from pipeline.settings import Settings

MODEL_FORMAT = "cmimh-model/2"


class Hasher(ABC):
    """A cross-modal hashing method: image and text features -> binary codes of ``bits`` bits.

    Subclasses set ``name`` (the registry key), ``Config`` (their settings dataclass),
    ``uses_torch`` (whether training can use a GPU: the rules ask for one only then), ``plot``
    (what ``train_loss.png`` shows: the history's columns it optimises, and the x axis),
    ``variants`` (the method-name variant keys, ``cmimh-kl2``: key -> the settings it sets;
    ``path=const`` sets a constant, ``path=a|b`` a choice indexed by the value: ``cmimh-recnorm1``) and
    ``train_seconds`` (a rough training time on the demo, one CPU thread: the train rule's
    Snakemake priority, so the long trainings start first and the short ones fill the gaps).
    """

    name: ClassVar[str]
    Config: ClassVar[type[Settings]]
    uses_torch: ClassVar[bool] = False
    plot: ClassVar[dict] = {"x": "epoch", "columns": None}
    variants: ClassVar[dict[str, tuple[str, ...]]] = {}
    train_seconds: ClassVar[int] = 5

    def __init__(self, bits: int, config: Settings | dict | None = None) -> None:
        self.bits = check_bits(bits, self.name)
        self.config = config if isinstance(config, self.Config) else self.Config.from_dict(config, f"{self.name} settings")

    # ------------------------------------------------------------------ learning and coding
    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0, device: Any = "cpu",
            progress: bool = False) -> list[dict]:
        """Learn from paired rows (row i of ``x`` and of ``y`` is one pair); return the history
        (one row per epoch or iteration: what :func:`write_history` writes)."""

    @abstractmethod
    def encode_image(self, x: np.ndarray) -> np.ndarray:
        """(n, bits) uint8 0/1 codes of image features (deterministic)."""

    @abstractmethod
    def encode_text(self, y: np.ndarray) -> np.ndarray:
        """(n, bits) uint8 0/1 codes of text features (deterministic)."""

    def embed_image(self, x: np.ndarray) -> np.ndarray | None:
        """The continuous embedding the image codes binarise, if the method has one (else None)."""
        return None

    def embed_text(self, y: np.ndarray) -> np.ndarray | None:
        """The continuous embedding the text codes binarise, if the method has one (else None)."""
        return None

    def diagnostics(self, x_db: np.ndarray, y_db: np.ndarray, codes_image: np.ndarray,
                    codes_text: np.ndarray) -> dict:
        """Table II diagnostics of the database codes (already encoded from ``x_db``/``y_db``):
        Corr MSE per modality; the TC estimate where a method has a TC discriminator (CMIMH)."""
        return {"corr_mse_image": corr_mse(codes_image), "corr_mse_text": corr_mse(codes_text),
                "tc_image": None, "tc_text": None}

    # ------------------------------------------------------------------ persistence
    @property
    def fitted(self) -> bool:
        return all(v is not None for k, v in vars(self).items() if k.endswith("_"))

    def _require_fitted(self, what: str) -> None:
        if not self.fitted:
            raise PipelineError(f"{self.name} {what}: the model is not fitted")

    @abstractmethod
    def state(self) -> dict:
        """The learned state: numpy arrays and plain values (what ``model.pt`` stores)."""

    @classmethod
    @abstractmethod
    def from_state(cls, bits: int, config: Settings | dict, state: dict, device: Any = "cpu") -> "Hasher":
        """Rebuild a fitted model from :meth:`state`; a damaged state is one line."""


# ============================================================================ shared checks
def check_bits(bits: Any, name: str) -> int:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or bits < 1:
        raise PipelineError(f"{name}: bits must be an integer >= 1, got {bits!r}")
    return int(bits)


def check_seed(seed: Any, name: str) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise PipelineError(f"{name}: seed must be an integer, got {seed!r}")
    return int(seed)


def check_features(a: Any, where: str, dim: int | None = None, min_rows: int = 1,
                   allow_bool: bool = False, dtype: Any = np.float32, row_offset: int = 0) -> np.ndarray:
    """A feature matrix as ``dtype``: 2-D with >= ``min_rows`` rows (and ``dim`` columns), real
    numbers (booleans only with ``allow_bool``), finite; else one line naming ``where`` and the
    first bad cell (rows counted from ``row_offset`` when checking a block of a larger array).
    Every method checks its inputs with this."""
    try:
        a = np.asarray(a)
    except Exception:  # noqa: BLE001 - ragged lists and the like
        raise PipelineError(f"{where}: not a numeric array") from None
    if a.ndim != 2 or a.shape[0] < min_rows or a.shape[1] < 1:
        raise PipelineError(f"{where}: expected a 2-D array with >= {min_rows} row(s) and >= 1 "
                            f"column, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or (allow_bool and a.dtype == np.bool_)) \
            or np.issubdtype(a.dtype, np.complexfloating):
        raise PipelineError(f"{where}: expected numbers (real numbers), got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise PipelineError(f"{where}: expected {dim} columns (as in training), got {a.shape[1]}")
    a = a.astype(dtype, copy=False)
    bad = ~np.isfinite(a)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise PipelineError(f"{where}: NaN/inf in {int(bad.any(axis=1).sum())} rows, {int(bad.sum())} non-finite "
                            f"value(s) (first at row {row_offset + int(r)}, column {int(c)})")
    return a


def check_pair(x: Any, y: Any, name: str, min_rows: int = 2, allow_bool: bool = True,
               dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs: both 2-D, finite, the same number of rows (>= ``min_rows``), neither constant."""
    xa = check_features(x, f"{name} fit: image features", allow_bool=allow_bool, dtype=dtype)
    ya = check_features(y, f"{name} fit: text features", allow_bool=allow_bool, dtype=dtype)
    if len(xa) != len(ya):
        raise PipelineError(f"{name} fit: image and text row counts differ ({len(xa)} image rows but "
                            f"{len(ya)} text rows); row i of each must be the same pair")
    if len(xa) < min_rows:
        raise PipelineError(f"{name} fit: need at least {min_rows} training pairs, got {len(xa)}")
    # Features the same in every training row (all zeros from a failed extraction, say): the
    # eigen-solvers could not fit them, and CMIMH and CMFH trained without a word and gave every
    # item of that modality one code. Refused for every method.
    for modality, a in (("image", xa), ("text", ya)):
        if len(a) > 1 and not np.any(np.ptp(a, axis=0) > 0):
            raise PipelineError(f"{name}: the {modality} features are the same in all {len(a)} training rows "
                                "(constant or all zero: a failed extraction?); they cannot be hashed")
    return xa, ya


def zscore_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of training rows, in float64, as float32; a column
    with std < 1e-6 (constant in training) keeps std 1, so it is never divided by zero."""
    a64 = np.asarray(a, dtype=np.float64)
    sd = a64.std(axis=0)
    return a64.mean(axis=0).astype(np.float32), np.where(sd < 1e-6, 1.0, sd).astype(np.float32)


def corr_mse(codes: np.ndarray) -> float:
    """Corr MSE of Table II: mean((C - I)^2), C the L x L correlation matrix of the codes.

    Codes in 0/1 or +-1 (correlation is the same for both). A constant bit has no defined
    correlation; we set its off-diagonal entries to 0 and its diagonal to 1, so it adds
    nothing (its uselessness shows in the retrieval metrics, not here).
    """
    b = np.asarray(codes, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] < 2:
        raise PipelineError(f"corr_mse: need an (n >= 2, bits) code array, got shape {b.shape}")
    z = b - b.mean(axis=0)
    sd = np.sqrt((z ** 2).mean(axis=0))
    zn = np.divide(z, sd, out=np.zeros_like(z), where=sd > 0)
    c = zn.T @ zn / b.shape[0]
    np.fill_diagonal(c, 1.0)
    return float(((c - np.eye(c.shape[0])) ** 2).mean())


# ============================================================================ model.pt
def _to_tensors(obj: Any) -> Any:
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {str(k): _to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_tensors(v) for v in obj]
    return to_jsonable(obj)


def _to_arrays(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _to_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_arrays(v) for v in obj]
    return obj


def save_model(path: str | os.PathLike, model: Hasher, meta: dict | None = None) -> None:
    """``model.pt`` of any method: ``{format, method, bits, config, state, meta}``, written atomically.

    Arrays are stored as tensors and everything else as plain values, so :func:`load_model` reads
    it with ``torch.load(weights_only=True)`` (no pickled code runs on load), and the same model
    gives the same bytes (no timings: :func:`pipeline.io.without_timings`).
    """
    obj = {"format": MODEL_FORMAT, "method": model.name, "bits": model.bits, "config": model.config.to_dict(),
           "state": _to_tensors(model.state()), "meta": to_jsonable(meta or {})}
    save_torch(path, obj)


def read_model_file(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``, a missing or corrupt file being one clear error."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"model file not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PipelineError(f"cannot read model file {p} (corrupt or not a model): "
                            f"{type(e).__name__} {msg}".rstrip()) from None


def load_model(path: str | os.PathLike, device: Any = "cpu") -> tuple[Hasher, dict]:
    """Load any method's ``model.pt``; return (fitted model, meta)."""
    from pipeline.methods import method_class

    p = Path(path)
    obj = read_model_file(p)
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt != MODEL_FORMAT:
        old = fmt in ("cmimh-model/1", "cmimh-baseline/1")
        raise PipelineError(f"{p} is not a model file of this version (format {fmt!r}"
                            + ("; written by an older version: train again" if old else "") + ")")
    try:
        cls = method_class(str(obj["method"]))
        model = cls.from_state(int(obj["bits"]), obj["config"], _to_arrays(obj["state"]), device)
    except PipelineError:
        raise
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PipelineError(f"model file {p} is inconsistent: {type(e).__name__} {msg}".rstrip()) from None
    return model, dict(obj.get("meta") or {})


# ============================================================================ histories
def write_history(path: str | os.PathLike, history: list[dict]) -> None:
    """A training history as CSV, written atomically: ``epoch`` first (the epoch, or the iteration
    of an iterative solver), then the union of the rows' keys in first-seen order (None -> empty)."""
    rows = history or [{"epoch": 1}]
    fields = ["epoch"] + [k for k in dict.fromkeys(k for r in rows for k in r) if k != "epoch"]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        wr.writeheader()
        for i, r in enumerate(rows, 1):
            wr.writerow({"epoch": r.get("epoch", i), **{k: ("" if r.get(k) is None else r[k]) for k in fields[1:]}})


def final_row(history: list[dict]) -> dict | None:
    """The last history row without timings (what ``model.pt`` records of the fit)."""
    return without_timings(history[-1]) if history else None
