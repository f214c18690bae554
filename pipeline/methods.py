"""Every hashing method behind one interface: train, save, load, encode.

CMIMH (:mod:`pipeline.model`) and the comparison methods (:mod:`pipeline.baselines`: CVH,
CMFH, CCA-ITQ, DJSRH) train on the same features and write the same ``model.pt`` path, so the
encode, evaluate, search and report stages treat them alike. A method name may carry a variant
(``cmimh_no_mi``, ``cmimh-kl2``, ``cvh-ntrain1000``; :func:`pipeline.config.parse_method`).

A baseline's ``model.pt`` holds ``{format: cmimh-baseline/1, method, bits, state, meta}``
where ``state`` is the module's ``Model.state()`` with numpy arrays stored as tensors, so it
loads with ``torch.load(weights_only=True)`` (no pickled code runs on load).
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.config import BASELINES, base_method
from pipeline.errors import PipelineError
from pipeline.io import atomic_output, save_torch, to_jsonable

log = logging.getLogger(__name__)

BASELINE_FORMAT = "cmimh-baseline/1"


class Hasher(Protocol):
    """What the encode and search stages need from a trained model."""

    def encode_image(self, x: np.ndarray) -> np.ndarray: ...
    def encode_text(self, y: np.ndarray) -> np.ndarray: ...


def baseline_module(name: str) -> ModuleType:
    """The module of a comparison method (``pipeline.baselines.<name>``)."""
    if name not in BASELINES:
        raise PipelineError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")
    return importlib.import_module(f"pipeline.baselines.{name}")


def training_rows(features, settings: dict) -> np.ndarray:
    """The training pairs: the features file's ``train`` split, or ``train_size`` pairs drawn from
    the database with the seed (Table IX's training-set sizes; a ``-ntrain<n>`` method variant).

    The draw depends only on (database, train_size, seed), never on the queries.
    """
    n = settings.get("train_size")
    if n is None:
        return features.train
    db = features.database
    if not 1 <= int(n) <= len(db):
        raise PipelineError(f"train_size {n} must be between 1 and the database size {len(db)}")
    rng = np.random.default_rng([int(settings["seed"]), int(n)])
    return np.sort(rng.choice(db, size=int(n), replace=False))


def write_history(path: str | os.PathLike, history: list[dict]) -> None:
    """A baseline's per-iteration history as CSV (columns: the union of the rows' keys)."""
    rows = history or [{"epoch": 1}]
    fields = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        wr.writeheader()
        for i, r in enumerate(rows, 1):
            wr.writerow({"epoch": r.get("epoch", i), **{k: ("" if r.get(k) is None else r[k]) for k in fields[1:]}})


def train_method(method: str, x: np.ndarray, y: np.ndarray, bits: int, settings: dict, seed: int,
                 device: torch.device, *, log_csv: Path | None = None, progress: bool = True) -> tuple[Any, list[dict]]:
    """Train ``method`` (any base, variants already applied to ``settings``) on paired rows.

    Features that are the same in every training row (all zeros from a failed extraction, say)
    are refused for every method: CVH and CCA-ITQ could not fit them, but CMIMH and CMFH trained
    without a word and gave every item of that modality the same code."""
    base = base_method(method)
    for name, a in (("image", x), ("text", y)):
        a = np.asarray(a)
        if len(a) > 1 and not np.any(np.ptp(a, axis=0) > 0):
            raise PipelineError(f"{method}: the {name} features are the same in all {len(a)} training rows "
                                "(constant or all zero: a failed extraction?); they cannot be hashed")
    if base == "cmimh":
        from pipeline.model.train import train_cmimh

        return train_cmimh(x, y, bits, settings["cmimh"], seed, device, log_csv=log_csv, progress=progress)
    mod = baseline_module(base)
    s = {k: v for k, v in (settings.get("baseline") or {}).items() if k != "name"}
    t0 = time.perf_counter()
    model = mod.Model(int(bits), s, int(seed), str(device))
    history = model.fit(np.asarray(x, np.float32), np.asarray(y, np.float32), progress=progress)
    log.info("%s: %d bits fitted on %d pairs in %.1f s", base, bits, len(x), time.perf_counter() - t0)
    if log_csv is not None:
        write_history(log_csv, history)
    return model, history


def _to_tensors(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {str(k): _to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_tensors(v) for v in obj]
    return to_jsonable(obj)


def _to_arrays(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _to_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_arrays(v) for v in obj]
    return obj


def save_trained(path: str | os.PathLike, method: str, model: Any, meta: dict) -> None:
    """Save a trained model of any method atomically."""
    base = base_method(method)
    if base == "cmimh":
        from pipeline.model.train import save_model

        save_model(path, model, meta)
        return
    obj = {"format": BASELINE_FORMAT, "method": base, "state": _to_tensors(model.state()),
           "meta": to_jsonable(meta or {})}
    save_torch(path, obj)


def load_trained(path: str | os.PathLike, device: torch.device) -> tuple[Hasher, dict]:
    """Load any ``model.pt`` (CMIMH or a baseline); return (model with encode_image/encode_text, meta)."""
    from pipeline.model.train import MODEL_FORMAT, load_model, read_model_file

    p = Path(path)
    obj = read_model_file(p)
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt == MODEL_FORMAT:
        return load_model(p, device)
    if fmt != BASELINE_FORMAT:
        raise PipelineError(f"{p} is not a model file (format {fmt!r})")
    mod = baseline_module(str(obj.get("method")))
    try:
        model = mod.Model.from_state(_to_arrays(obj["state"]))
    except PipelineError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PipelineError(f"model file {p} is inconsistent: {type(e).__name__} {e}"[:300]) from None
    return model, dict(obj.get("meta") or {})


def code_diagnostics(model: Hasher, x_db: np.ndarray, y_db: np.ndarray, db_image: np.ndarray,
                     db_text: np.ndarray) -> dict:
    """Table II diagnostics of the database codes ``db_image``/``db_text`` (already encoded from
    ``x_db``/``y_db``): CMIMH's (Corr MSE and the TC estimate, which needs its probabilities), or
    Corr MSE alone for a method without a TC discriminator."""
    from pipeline.model.cmimh import CMIMH
    from pipeline.model.train import corr_mse, diagnostics

    if isinstance(model, CMIMH):
        return diagnostics(model, x_db, y_db)
    return {"corr_mse_image": corr_mse(db_image), "corr_mse_text": corr_mse(db_text), "tc_image": None, "tc_text": None}
