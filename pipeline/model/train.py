"""Training, persistence and Table II diagnostics for CMIMH (method.md, eq. 14).

One optimiser step on a mini-batch (x, y) of training pairs:

1. a = E(x), p = sigmoid(a) per modality; b ~ Bernoulli(p) by eq. 4 with the STE.
2. L = w_rec L_rec(b) + w_mi (-I_JS) + w_kl L_KL + w_tc (L_TC_x + L_TC_y) + w_bal L_bal
   (L_bal sums both modalities). Encoders, decoders and the critic step on L together
   (the critic maximises I_JS too, so the same sign is right for it). The TC
   discriminators receive gradients from L_TC but are NOT stepped by it.
3. The discriminators take their own step: BCE of C(p.detach()) (label 1) vs
   C(permute_dims(p.detach())) (label 0), on the same batch's p (before step 2's update).

Every term is checked for NaN/inf before any parameter moves; a bad value raises
PipelineError naming the term, epoch and step.

Tuning notes (synthetic two-view data, batch 100, 60 epochs, 16 bits; cmimh.DEFAULTS):
Adam 1e-3 learned on every data set and seed; SGD 1e-2 (momentum 0.9) was seed-dependent on
small dense data and failed on high-dimensional standardised sparse "tag" features (every bit
saturated, or p stayed at 1/2); SGD 1e-3 learned slowly. KL weight 0.5 beat 0.1 clearly
(1.0 was slightly better still); tc/bal 0.1 and weight decay changed little. The
``ste: identity`` gradient diverged (see cmimh.py).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.io import atomic_output, save_torch, to_jsonable
from pipeline.model import losses as L
from pipeline.model.cmimh import CMIMH, resolve_settings

MODEL_FORMAT = "cmimh-model/1"
COLLAPSE_CONF = 0.05
"""Warn when the last epoch's mean |2p - 1| is below this: all p sit at 1/2 (collapsed start)."""
HISTORY_FIELDS = ("epoch", "step", "loss", "rec", "mi", "kl", "tc", "bal", "disc", "conf", "seconds")
"""Per-epoch history columns (means over the epoch's steps). ``mi`` is the I_JS estimate
(higher = more shared information; the loss uses -mi). ``tc`` = L_TC_x + L_TC_y, ``bal`` and
``disc`` sum both modalities. ``conf`` = mean |2p - 1|: near 0 means every p sits at 1/2 (the
collapsed start method.md warns about, where the critic gets no signal). Columns of switched-off
terms whose networks do not exist (rec, mi, tc, disc) are None; kl and bal are always logged."""


# ------------------------------------------------------------------------- devices, seeds
def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cpu``; ``cuda``/``cuda:N`` (must exist)."""
    if not isinstance(name, str):
        raise PipelineError(f"device must be a string (auto, cpu, cuda, cuda:N), got {name!r}")
    n = name.strip().lower()
    if n == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if n == "cpu":
        return torch.device("cpu")
    if n == "cuda" or (n.startswith("cuda:") and n[5:].isdigit()):
        if not torch.cuda.is_available():
            raise PipelineError(f"device {name!r} requested but CUDA is not available "
                                f"(use device: auto or cpu)")
        dev = torch.device(n)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PipelineError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise PipelineError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels for the duration of training; the global flag is restored after."""
    prev, prev_warn = (torch.are_deterministic_algorithms_enabled(),
                       torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent streams for initialisation, sampling noise/permutations and batch order."""
    s = np.random.SeedSequence(int(seed)).generate_state(3, dtype=np.uint64)
    return tuple(int(v) & ((1 << 63) - 1) for v in s)  # type: ignore[return-value]


def check_features(a: Any, where: str, dim: int | None = None, min_rows: int = 1,
                   allow_bool: bool = False) -> np.ndarray:
    """A feature matrix as float32: 2-D with >= ``min_rows`` rows (and ``dim`` columns), real
    (booleans only with ``allow_bool``), finite; else one line naming ``where`` (and the first
    bad cell). Shared by the deep models."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] < min_rows or a.shape[1] < 1:
        raise PipelineError(f"{where}: expected a 2-D array with >= {min_rows} row(s) and >= 1 "
                            f"column, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or (allow_bool and a.dtype == np.bool_)) \
            or np.issubdtype(a.dtype, np.complexfloating):
        raise PipelineError(f"{where}: expected real numbers, got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise PipelineError(f"{where}: expected {dim} columns (as in training), got {a.shape[1]}")
    a = a.astype(np.float32, copy=False)
    bad = ~np.isfinite(a)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise PipelineError(f"{where}: {int(bad.sum())} non-finite value(s) (first at row {r}, column {c})")
    return a


def _check_arrays(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    arrs = [check_features(a, f"cmimh training: {name} features") for name, a in (("image", x), ("text", y))]
    if arrs[0].shape[0] != arrs[1].shape[0]:
        raise PipelineError(f"cmimh training: {arrs[0].shape[0]} image rows but "
                            f"{arrs[1].shape[0]} text rows (pairs must align)")
    return arrs[0], arrs[1]


def _optimizers(model: CMIMH, s: dict) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    main = [
        {"params": model.encoder_parameters() + model.critic_parameters(), "lr": s["lr"]},
        {"params": model.decoder_parameters(), "lr": s["lr_decoder"]},
    ]
    main = [g for g in main if g["params"]]
    disc = model.discriminator_parameters()

    def make(groups: list[dict]) -> torch.optim.Optimizer:
        if s["optimizer"] == "sgd":
            return torch.optim.SGD(groups, lr=s["lr"], momentum=s["momentum"],
                                   weight_decay=s["weight_decay"])
        return torch.optim.Adam(groups, lr=s["lr"], weight_decay=s["weight_decay"])

    return make(main), (make([{"params": disc, "lr": s["lr"]}]) if disc else None)


# ------------------------------------------------------------------------- training
def train_cmimh(
    x: np.ndarray,
    y: np.ndarray,
    bits: int,
    settings: dict,
    seed: int,
    device: torch.device,
    log_csv: Path | None = None,
    progress: bool = True,
) -> tuple[CMIMH, list[dict]]:
    """Train CMIMH on paired training features; return (model in eval mode, per-epoch history).

    ``x`` (n, d_x) image and ``y`` (n, d_y) text features, row i a pair. Batches are the
    rows shuffled each epoch by a generator seeded from ``seed``; the incomplete last batch
    is dropped, so batch_size must not exceed n. Same data + settings + seed gives
    bit-identical codes on CPU. ``log_csv``: per-epoch history written atomically at the end.
    """
    s = resolve_settings(settings)
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or bits < 1:
        raise PipelineError(f"cmimh training: bits must be an integer >= 1, got {bits!r}")
    xa, ya = _check_arrays(x, y)
    n = xa.shape[0]
    B = s["batch_size"]
    if n < B:
        raise PipelineError(f"cmimh training: batch_size {B} exceeds the {n} training pairs")
    device = torch.device(device)
    w = s["weights"]
    seed_init, seed_noise, seed_batch = _seeds(seed)

    with _deterministic():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed_init)
            model = CMIMH(xa.shape[1], ya.shape[1], int(bits), s)
        model.to(device)
        X = torch.from_numpy(xa).to(device)
        Y = torch.from_numpy(ya).to(device)
        model.set_standardization(X, Y)
        with torch.no_grad():
            X = model.standardize_x(X)
            Y = model.standardize_y(Y)
        gen = torch.Generator(device=device)
        gen.manual_seed(seed_noise)
        gen_batch = torch.Generator()
        gen_batch.manual_seed(seed_batch)
        opt, opt_disc = _optimizers(model, s)

        steps_per_epoch = n // B
        total = s["iterations"] if s["iterations"] is not None else s["epochs"] * steps_per_epoch
        epochs = math.ceil(total / steps_per_epoch)
        history: list[dict] = []
        step = 0
        model.train()
        bar = _progress(epochs, int(bits), progress)
        try:
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                perm = torch.randperm(n, generator=gen_batch).to(device)
                sums: dict[str, float] = {}
                count = 0
                for i in range(steps_per_epoch):
                    if step >= total:
                        break
                    idx = perm[i * B:(i + 1) * B]
                    vals = _step(model, X[idx], Y[idx], s, w, gen, opt, opt_disc, epoch, step + 1)
                    step += 1
                    count += 1
                    for k, v in vals.items():
                        sums[k] = sums.get(k, 0.0) + v
                row: dict[str, Any] = {"epoch": epoch, "step": step}
                for k in HISTORY_FIELDS[2:-1]:
                    row[k] = sums[k] / count if k in sums else None
                row["seconds"] = time.perf_counter() - t0
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4g}", mi=_fmt(row["mi"]), conf=f"{row['conf']:.2f}")
                bar.update(1)
        finally:
            bar.close()
    model.eval()
    last = history[-1]
    if last["conf"] < COLLAPSE_CONF:
        mi = "" if last["mi"] is None else f", I_JS = {last['mi']:.3f} (-2 log 2 = no critic signal)"
        warnings.warn(f"cmimh training ({bits} bits) ended collapsed: mean |2p-1| = {last['conf']:.3f}"
                      f"{mi}: the codes carry little information; try optimizer adam or more epochs",
                      RuntimeWarning, stacklevel=2)
    if log_csv is not None:
        write_history_csv(log_csv, history)
    return model, history


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _progress(epochs: int, bits: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=epochs, desc=f"cmimh {bits} bits", unit="epoch", disable=not enabled,
                leave=False, dynamic_ncols=True)


def _step(model: CMIMH, xb: torch.Tensor, yb: torch.Tensor, s: dict, w: dict,
          gen: torch.Generator, opt: torch.optim.Optimizer, opt_disc: torch.optim.Optimizer | None,
          epoch: int, step: int) -> dict[str, float]:
    """One training step; returns the terms' values (python floats)."""
    a_x, a_y = model.enc_x(xb), model.enc_y(yb)
    p_x, p_y = torch.sigmoid(a_x), torch.sigmoid(a_y)
    terms: dict[str, torch.Tensor] = {}
    if w["rec"] > 0:
        b_x, b_y = model.sample(a_x, gen), model.sample(a_y, gen)
        terms["rec"] = L.reconstruction(xb, model.dec_x(b_x)) + L.reconstruction(yb, model.dec_y(b_y))
    if w["mi"] > 0:
        if s["critic_input"] == "probs":
            terms["mi"] = L.js_mi(model.critic_scores(p_x, p_y))
        else:  # I_JS averaged over K pairs of fresh binary samples (gradients through the STE)
            K = s["critic_samples"]
            terms["mi"] = sum(L.js_mi(model.critic_scores(model.sample(a_x, gen), model.sample(a_y, gen)))
                              for _ in range(K)) / K
    terms["kl"] = L.sym_bernoulli_kl(p_x, p_y)
    terms["bal"] = L.balance(p_x) + L.balance(p_y)
    if w["tc"] > 0:
        terms["tc"] = L.tc_estimate(model.disc_x(p_x)) + L.tc_estimate(model.disc_y(p_y))
    loss = sum((-w[k] if k == "mi" else w[k]) * t for k, t in terms.items() if w[k] > 0)
    if not isinstance(loss, torch.Tensor):  # every weight 0: nothing to learn
        raise PipelineError("cmimh training: all loss weights are 0")
    terms["loss"] = loss
    if opt_disc is not None:
        px_d, py_d = p_x.detach(), p_y.detach()
        terms["disc"] = (
            L.tc_discriminator_loss(model.disc_x(px_d), model.disc_x(L.permute_dims(px_d, gen)))
            + L.tc_discriminator_loss(model.disc_y(py_d), model.disc_y(L.permute_dims(py_d, gen)))
        )
    with torch.no_grad():
        terms["conf"] = 0.5 * ((2 * p_x - 1).abs().mean() + (2 * p_y - 1).abs().mean())

    names = list(terms)
    values = torch.stack([t.detach().float() for t in terms.values()]).cpu().tolist()  # one sync
    for k, v in zip(names, values):
        if not math.isfinite(v):
            raise PipelineError(f"cmimh training: loss term '{k}' is {v} at epoch {epoch} step {step} "
                                f"(lower lr or check features)")

    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if opt_disc is not None:
        opt_disc.zero_grad(set_to_none=True)  # drop the encoder loss's gradients on C
        terms["disc"].backward()
        opt_disc.step()
    return dict(zip(names, values))


def write_history_csv(path: str | os.PathLike, history: list[dict]) -> None:
    """Per-epoch history as CSV (None -> empty cell), written atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(HISTORY_FIELDS), extrasaction="ignore")
            wr.writeheader()
            for row in history:
                wr.writerow({k: ("" if row.get(k) is None else row[k]) for k in HISTORY_FIELDS})


# ------------------------------------------------------------------------- persistence
def save_model(path: str | os.PathLike, model: CMIMH, meta: dict) -> None:
    """Save {format, state_dict, settings, bits, dims, meta} atomically with torch.save.

    Only tensors and plain JSON-like values are stored, so :func:`load_model` can use
    ``weights_only=True`` (no pickled code is executed on load).
    """
    obj = {
        "format": MODEL_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "settings": to_jsonable(model.settings),
        "bits": model.bits,
        "dims": {"image": model.dim_x, "text": model.dim_y},
        "meta": to_jsonable(meta or {}),
    }
    save_torch(path, obj)


def read_model_file(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain values only; no pickled code
    runs), a missing or corrupt file being one clear error."""
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"model file not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PipelineError(f"cannot read model file {p} (corrupt or not a model): "
                            f"{type(e).__name__} {msg}".rstrip()) from None


def load_model(path: str | os.PathLike, device: torch.device) -> tuple[CMIMH, dict]:
    """Load a model saved by :func:`save_model` onto ``device`` (eval mode); return (model, meta)."""
    p = Path(path)
    obj = read_model_file(p)
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise PipelineError(f"{p} is not a CMIMH model file (expected format {MODEL_FORMAT})")
    try:
        model = CMIMH(int(obj["dims"]["image"]), int(obj["dims"]["text"]), int(obj["bits"]),
                      obj["settings"])
        model.load_state_dict(obj["state_dict"], strict=True)
    except PipelineError:
        raise
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PipelineError(f"model file {p} is inconsistent: {type(e).__name__} {msg}".rstrip()) from None
    model.to(torch.device(device)).eval()
    return model, dict(obj.get("meta") or {})


# ------------------------------------------------------------------------- diagnostics
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


def diagnostics(model: CMIMH, x_db: np.ndarray, y_db: np.ndarray, batch_size: int = 4096) -> dict:
    """Table II diagnostics on database features (raw; the model standardises).

    Returns {corr_mse_image, corr_mse_text, tc_image, tc_text}: Corr MSE of the deterministic
    codes (:func:`corr_mse`) and the TC estimate mean_i logit C(p_i) per modality (None when
    the model has no discriminators, i.e. weights.tc == 0).
    """
    px = torch.from_numpy(model.probs_image(x_db, batch_size))
    py = torch.from_numpy(model.probs_text(y_db, batch_size))
    out: dict[str, float | None] = {
        "corr_mse_image": corr_mse((px >= 0.5).numpy()),
        "corr_mse_text": corr_mse((py >= 0.5).numpy()),
        "tc_image": None,
        "tc_text": None,
    }
    if model.disc_x is not None and model.disc_y is not None:
        was = model.training
        model.eval()
        with torch.no_grad():
            for key, disc, p in (("tc_image", model.disc_x, px), ("tc_text", model.disc_y, py)):
                logits = [disc(p[i:i + batch_size].to(model.device)).cpu()
                          for i in range(0, p.shape[0], batch_size)]
                out[key] = float(L.tc_estimate(torch.cat(logits)))
        model.train(was)
    return out
