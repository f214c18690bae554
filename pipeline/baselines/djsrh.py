"""DJSRH: Deep Joint-Semantics Reconstructing Hashing, on pre-extracted features.

Su, Zhong & Zhang, "Deep Joint-Semantics Reconstructing Hashing for Large-Scale Unsupervised
Cross-Modal Retrieval", ICCV 2019 (doi:10.1109/ICCV.2019.00312); official PyTorch code
github.com/zs-zhong/DJSRH (``train.py``, ``models.py``, ``settings.py``), read for the design,
not copied. The paper's PDF was not available to us, so its equations are named by content
below (in the paper's order) rather than by number; each was checked against the official code.
Per mini-batch of m pairs (x_i, y_i) with features F_I (image) and F_T (text):

* single-modal affinities: S_I = cos(F_I, F_I), S_T = cos(F_T, F_T) (row-normalised features,
  F^ F^T). The official code maps them by ``2 S - 1``: its features (ReLU FC7, bag-of-words
  tags) are non-negative, so cosines lie in [0, 1] and the map spreads them over [-1, 1].
  ``cos_rescale`` decides per modality: ``auto`` (default) applies it exactly when the
  training features of that modality are all >= 0 (the official case), ``always`` / ``never``.
  Our image features are PCA-projected (centred) FC7, whose cosines already span [-1, 1].
* fusion: S~ = beta S_I + (1 - beta) S_T.
* joint-semantics affinity: S = (1 - eta) S~ + eta S~ S~^T / m; the target is mu S.
* hashing networks: H = net(x); training codes B = tanh(alpha H) with alpha = sqrt(epoch)
  (1-based epoch; the code's ``set_alpha``: sqrt(e + 1) for 0-based e), so tanh approaches
  sign as training goes on; inference codes B = sign(H) (bit 1 iff H >= 0).
* reconstruction loss: with B^ the row-normalised codes (so B^ B^T are cosines)
  L = ||mu S - B^_I B^_T^T||^2 + lambda1 ||mu S - B^_I B^_I^T||^2 + lambda2 ||mu S - B^_T B^_T^T||^2,
  each term the MEAN squared error over the m x m entries (the code's ``F.mse_loss``).

Defaults are the official MIRFlickr settings (settings.py): beta 0.9, lambda1 = lambda2 = 0.1,
80 epochs, lr 0.001 (image net) and 0.01 (text net); for every data set: batch 32, mu 1.5,
eta 0.4, SGD momentum 0.9, weight decay 5e-4. The README's ablation (NUS-WIDE) confirms
eta = 0.4, mu = 1.5, lambda1 = lambda2 = 0.1 and the alpha schedule (alpha = 1 is "DJSRH-6").

Difference from the paper (documented on purpose): the official image network fine-tunes
ImageNet AlexNet on pixels (conv layers + FC6/FC7, then a linear ``fc_encode`` 4096 -> bits),
and S_I uses a frozen copy's FC7. Our pipeline has only pre-extracted FC7 -> PCA features (d_x),
so S_I is computed on them and the image network is a hash head on them: ``img_hidden`` = 0
is the linear ``fc_encode`` analogue; > 0 adds one ReLU hidden layer standing in for the
fine-tuned FC7. The text network is the official TxtNet: Linear(d_y, 4096) - ReLU -
Linear(4096, bits). Networks see the raw features (as in the official code) unless
``standardize`` is true (z-scores from the training rows, stored in the state).

Demo notes (2,000 training pairs, 256-d PCA of a randomly initialised AlexNet's FC7, 384-d
MiniLM text, 32 bits, seed 0): defaults gave mAP@1000 I->T 0.389, T->I 0.374 (random codes
0.285); ``standardize: true`` was worse (0.354 / 0.340), and so was a 1,024-wide image hidden
layer on standardised inputs (0.380 / 0.372), so the defaults stay the official raw-input linear head.
beta = 0.3 (the official WIKI value; the demo's text is the stronger view) gave 0.407 / 0.383.
Fit time on one CPU thread: about 45-60 s (80 epochs x 62 steps; the 4096-wide TxtNet dominates).

Settings (``DEFAULTS``; unknown keys are errors): beta, eta, mu, lambda1, lambda2, batch_size,
epochs, lr_img, lr_txt, momentum, weight_decay, img_hidden, txt_hidden,
alpha_schedule (sqrt | constant), cos_rescale (auto | always | never), standardize.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.baselines.common import merge_settings
from pipeline.errors import PipelineError
from pipeline.model.train import _deterministic, check_features  # as CMIMH: kernels scope, input checks

log = logging.getLogger(__name__)

NAME = "djsrh"
STATE_FORMAT = "djsrh-state/1"

#: What train_loss.png shows: the loss it minimises and its three terms, per epoch.
PLOT = {"x": "epoch", "columns": ("loss", "loss_it", "loss_ii", "loss_tt")}
DEFAULTS: dict[str, Any] = {
    "beta": 0.9,            # S~ = beta S_I + (1-beta) S_T; official MIRFlickr (WIKI 0.3, NUS-WIDE 0.6)
    "eta": 0.4,             # S = (1-eta) S~ + eta S~S~^T/m; official, all data sets
    "mu": 1.5,              # scale of the target mu*S; official, all data sets
    "lambda1": 0.1,         # weight of the image-image term; official MIRFlickr / NUS-WIDE
    "lambda2": 0.1,         # weight of the text-text term; official MIRFlickr / NUS-WIDE
    "batch_size": 32,       # official BATCH_SIZE (incomplete last batch dropped, as drop_last=True)
    "epochs": 80,           # official NUM_EPOCH for MIRFlickr / NUS-WIDE
    "lr_img": 0.001,        # official LR_IMG (MIRFlickr / NUS-WIDE)
    "lr_txt": 0.01,         # official LR_TXT
    "momentum": 0.9,        # official SGD momentum
    "weight_decay": 5e-4,   # official SGD weight decay
    "img_hidden": 0,        # 0: linear hash layer on the features (fc_encode analogue)
    "txt_hidden": 4096,     # official TxtNet hidden width
    "alpha_schedule": "sqrt",   # sqrt: alpha = sqrt(epoch); constant: alpha = 1 (ablation DJSRH-6)
    "cos_rescale": "auto",      # 2cos-1 per modality: auto (iff features >= 0) | always | never
    "standardize": False,       # z-score network inputs (training rows); official: raw features
}

_CHOICES = {"alpha_schedule": ("sqrt", "constant"), "cos_rescale": ("auto", "always", "never")}
_UNIT = ("beta", "eta")                       # in [0, 1]
_POS = ("mu", "lr_img", "lr_txt")             # > 0
_NONNEG = ("lambda1", "lambda2", "weight_decay")
_ENCODE_BATCH = 4096


# ------------------------------------------------------------------------- settings
def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _num(key: str, v: Any) -> float:
    if isinstance(v, str):  # PyYAML reads 1e-3 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(v)):
        raise PipelineError(f"djsrh settings: {key} must be a finite number, got {v!r}")
    return float(v)


def resolve_settings(settings: dict | None) -> dict:
    """Merge ``settings`` over DEFAULTS and validate; one-line PipelineError on a bad key/value."""
    s = merge_settings(NAME, DEFAULTS, settings)
    for k in _UNIT:
        s[k] = _num(k, s[k])
        if not 0.0 <= s[k] <= 1.0:
            raise PipelineError(f"djsrh settings: {k} must be in [0, 1], got {s[k]!r}")
    for k in _POS:
        s[k] = _num(k, s[k])
        if s[k] <= 0:
            raise PipelineError(f"djsrh settings: {k} must be > 0, got {s[k]!r}")
    for k in _NONNEG:
        s[k] = _num(k, s[k])
        if s[k] < 0:
            raise PipelineError(f"djsrh settings: {k} must be >= 0, got {s[k]!r}")
    s["momentum"] = _num("momentum", s["momentum"])
    if not 0.0 <= s["momentum"] < 1.0:
        raise PipelineError(f"djsrh settings: momentum must be in [0, 1), got {s['momentum']!r}")
    for k, lo in (("batch_size", 2), ("epochs", 1), ("txt_hidden", 1), ("img_hidden", 0)):
        if not _is_int(s[k]) or s[k] < lo:
            raise PipelineError(f"djsrh settings: {k} must be an integer >= {lo}, got {s[k]!r}")
        s[k] = int(s[k])
    for k, choices in _CHOICES.items():
        if s[k] not in choices:
            raise PipelineError(f"djsrh settings: {k} must be one of {', '.join(choices)}, got {s[k]!r}")
    if not isinstance(s["standardize"], bool):
        raise PipelineError(f"djsrh settings: standardize must be true or false, got {s['standardize']!r}")
    return s


# ------------------------------------------------------------------------- the method's formulas
def cosine_matrix(feats: torch.Tensor, rescale: bool) -> torch.Tensor:
    """Single-modal affinity: m x m cosine similarities of the rows (zero rows give 0); 2c - 1 if ``rescale``."""
    f = F.normalize(feats, dim=1)
    c = f @ f.T
    return 2.0 * c - 1.0 if rescale else c


def joint_affinity(fx: torch.Tensor, fy: torch.Tensor, beta: float, eta: float, mu: float,
                   rescale_x: bool = False, rescale_y: bool = False) -> torch.Tensor:
    """Joint-semantics affinity scaled by mu: mu * [(1-eta) S~ + eta S~ S~^T / m], S~ = beta S_I + (1-beta) S_T."""
    m = fx.shape[0]
    s_tilde = beta * cosine_matrix(fx, rescale_x) + (1.0 - beta) * cosine_matrix(fy, rescale_y)
    s = (1.0 - eta) * s_tilde + eta * (s_tilde @ s_tilde.T) / m
    return mu * s


def reconstruction_loss(code_x: torch.Tensor, code_y: torch.Tensor, target: torch.Tensor,
                        lambda1: float, lambda2: float) -> dict[str, torch.Tensor]:
    """Joint-semantics reconstruction loss on relaxed codes: MSE of code cosines against ``target`` (= mu S).

    Returns {"loss", "loss_it", "loss_ii", "loss_tt"}: loss = loss_it + lambda1 loss_ii +
    lambda2 loss_tt, each the mean over the m x m entries.
    """
    bx, by = F.normalize(code_x, dim=1), F.normalize(code_y, dim=1)
    loss_ii = F.mse_loss(bx @ bx.T, target)
    loss_it = F.mse_loss(bx @ by.T, target)
    loss_tt = F.mse_loss(by @ by.T, target)
    return {"loss": loss_it + lambda1 * loss_ii + lambda2 * loss_tt,
            "loss_it": loss_it, "loss_ii": loss_ii, "loss_tt": loss_tt}


def alpha_at(epoch: int, schedule: str) -> float:
    """tanh sharpness of 1-based ``epoch``: sqrt(epoch) (official ``set_alpha``) or 1."""
    return math.sqrt(epoch) if schedule == "sqrt" else 1.0


# ------------------------------------------------------------------------- networks
def _image_net(dim: int, hidden: int, bits: int) -> nn.Sequential:
    if hidden == 0:
        return nn.Sequential(nn.Linear(dim, bits))
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))


def _text_net(dim: int, hidden: int, bits: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))


def _zscore_stats(a: np.ndarray, on: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean/std of the training rows (std < 1e-6 -> 1); identity when ``on`` is false."""
    if not on:
        return np.zeros(a.shape[1], np.float32), np.ones(a.shape[1], np.float32)
    a64 = a.astype(np.float64)
    sd = a64.std(axis=0)
    return a64.mean(axis=0).astype(np.float32), np.where(sd < 1e-6, 1.0, sd).astype(np.float32)


# ------------------------------------------------------------------------- the model
class Model:
    """DJSRH image and text hashing networks trained by joint-semantics reconstruction."""

    def __init__(self, bits: int, settings: dict | None = None, seed: int = 0, device: str = "cpu") -> None:
        from pipeline.model.train import resolve_device

        if not _is_int(bits) or bits < 1:
            raise PipelineError(f"djsrh: bits must be an integer >= 1, got {bits!r}")
        if not _is_int(seed):
            raise PipelineError(f"djsrh: seed must be an integer, got {seed!r}")
        self.bits = int(bits)
        self.settings = resolve_settings(settings)
        self.seed = int(seed)
        self.device_name = device
        self.device = resolve_device(device)
        self.dim_x: int | None = None
        self.dim_y: int | None = None
        self.rescale_x = self.rescale_y = False
        self.img_net: nn.Sequential | None = None
        self.txt_net: nn.Sequential | None = None
        self.mean_x = self.std_x = self.mean_y = self.std_y = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- construction
    def _build(self, dim_x: int, dim_y: int) -> None:
        """Create both networks (PyTorch default init, as the official code) under the seed."""
        s = self.settings
        self.dim_x, self.dim_y = int(dim_x), int(dim_y)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seeds()[0])
            self.img_net = _image_net(self.dim_x, s["img_hidden"], self.bits)
            self.txt_net = _text_net(self.dim_y, s["txt_hidden"], self.bits)
        self.img_net.to(self.device)
        self.txt_net.to(self.device)

    def _seeds(self) -> tuple[int, int]:
        """Independent streams for initialisation and mini-batch order."""
        st = np.random.SeedSequence(self.seed).generate_state(2, dtype=np.uint64)
        return int(st[0]) & ((1 << 63) - 1), int(st[1]) & ((1 << 63) - 1)

    def _optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        assert self.img_net is not None and self.txt_net is not None
        return torch.optim.SGD([{"params": self.img_net.parameters(), "lr": s["lr_img"]},
                                {"params": self.txt_net.parameters(), "lr": s["lr_txt"]}],
                               lr=s["lr_img"], momentum=s["momentum"], weight_decay=s["weight_decay"])

    def _batch_loss(self, xb: torch.Tensor, yb: torch.Tensor, target: torch.Tensor,
                    alpha: float) -> dict[str, torch.Tensor]:
        """Reconstruction loss for standardised network inputs (xb, yb) against mu*S (``target``)."""
        assert self.img_net is not None and self.txt_net is not None
        code_x = torch.tanh(alpha * self.img_net(xb))
        code_y = torch.tanh(alpha * self.txt_net(yb))
        s = self.settings
        return reconstruction_loss(code_x, code_y, target, s["lambda1"], s["lambda2"])

    def _step(self, opt: torch.optim.Optimizer, x_raw: torch.Tensor, y_raw: torch.Tensor,
              xb: torch.Tensor, yb: torch.Tensor, alpha: float) -> dict[str, torch.Tensor]:
        """One SGD step on a mini-batch: mu*S from the raw features, loss on the network outputs."""
        s = self.settings
        with torch.no_grad():
            target = joint_affinity(x_raw, y_raw, s["beta"], s["eta"], s["mu"],
                                    self.rescale_x, self.rescale_y)
        terms = self._batch_loss(xb, yb, target, alpha)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        return terms

    # ---------------------------------------------------------------- training
    def fit(self, x: np.ndarray, y: np.ndarray, progress: bool = False) -> list[dict]:
        """Train on paired rows (x_i, y_i); returns one history row per epoch (means of its steps)."""
        s = self.settings
        xa = check_features(x, "djsrh fit image features", allow_bool=True)
        ya = check_features(y, "djsrh fit text features", allow_bool=True)
        if xa.shape[0] != ya.shape[0]:
            raise PipelineError(f"djsrh fit: {xa.shape[0]} image rows but {ya.shape[0]} text rows "
                                f"(row i of each must be one pair)")
        n, m = xa.shape[0], s["batch_size"]
        if n < m:
            raise PipelineError(f"djsrh fit: batch_size {m} exceeds the {n} training pairs")
        rule = s["cos_rescale"]
        self.rescale_x = rule == "always" or (rule == "auto" and bool((xa >= 0).all()))
        self.rescale_y = rule == "always" or (rule == "auto" and bool((ya >= 0).all()))
        self.mean_x, self.std_x = _zscore_stats(xa, s["standardize"])
        self.mean_y, self.std_y = _zscore_stats(ya, s["standardize"])
        self._build(xa.shape[1], ya.shape[1])
        assert self.img_net is not None and self.txt_net is not None

        dev = self.device
        X_raw, Y_raw = torch.from_numpy(xa).to(dev), torch.from_numpy(ya).to(dev)
        X = (X_raw - torch.from_numpy(self.mean_x).to(dev)) / torch.from_numpy(self.std_x).to(dev)
        Y = (Y_raw - torch.from_numpy(self.mean_y).to(dev)) / torch.from_numpy(self.std_y).to(dev)
        gen = torch.Generator()
        gen.manual_seed(self._seeds()[1])
        opt = self._optimizer()
        steps = n // m
        history: list[dict] = []
        from tqdm.auto import tqdm

        bar = tqdm(total=s["epochs"], desc=f"djsrh {self.bits} bits", unit="epoch",
                   disable=not progress, leave=False, dynamic_ncols=True)
        t_fit = time.perf_counter()
        self.img_net.train()
        self.txt_net.train()
        try:
            with _deterministic():
                for epoch in range(1, s["epochs"] + 1):
                    t0 = time.perf_counter()
                    alpha = alpha_at(epoch, s["alpha_schedule"])
                    perm = torch.randperm(n, generator=gen).to(dev)
                    sums = torch.zeros(4, dtype=torch.float64, device=dev)
                    for i in range(steps):
                        idx = perm[i * m:(i + 1) * m]
                        terms = self._step(opt, X_raw[idx], Y_raw[idx], X[idx], Y[idx], alpha)
                        sums += torch.stack([terms[k].detach().double()
                                             for k in ("loss", "loss_it", "loss_ii", "loss_tt")])
                    means = (sums / steps).cpu().tolist()  # one sync per epoch
                    if not all(math.isfinite(v) for v in means):
                        raise PipelineError(f"djsrh fit: loss became non-finite in epoch {epoch} "
                                            f"(lower lr_img/lr_txt or check the features)")
                    row = {"epoch": epoch, "step": epoch * steps, "alpha": alpha,
                           "loss": means[0], "loss_it": means[1], "loss_ii": means[2],
                           "loss_tt": means[3], "seconds": time.perf_counter() - t0}
                    history.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4g}")
                    bar.update(1)
        finally:
            bar.close()
        self.img_net.eval()
        self.txt_net.eval()
        log.info("djsrh %d bits: %d epochs x %d steps on %d pairs in %.1f s, final loss %.4f",
                 self.bits, s["epochs"], steps, n, time.perf_counter() - t_fit, history[-1]["loss"])
        return history

    # ---------------------------------------------------------------- inference
    def _encode(self, a: Any, which: str) -> np.ndarray:
        if self.img_net is None or self.txt_net is None:
            raise PipelineError("djsrh: the model is not fitted (call fit or from_state first)")
        img = which == "image"
        what = f"encode_{which}"
        arr = check_features(a, f"djsrh {what}", self.dim_x if img else self.dim_y, min_rows=0,
                             allow_bool=True)
        net = self.img_net if img else self.txt_net
        mean = torch.from_numpy(self.mean_x if img else self.mean_y).to(self.device)
        std = torch.from_numpy(self.std_x if img else self.std_y).to(self.device)
        out = np.zeros((arr.shape[0], self.bits), dtype=np.uint8)
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                for i in range(0, arr.shape[0], _ENCODE_BATCH):
                    t = torch.from_numpy(arr[i:i + _ENCODE_BATCH]).to(self.device)
                    h = net((t - mean) / std)
                    out[i:i + _ENCODE_BATCH] = (h >= 0).cpu().numpy()  # sign(H), 0 counted as +1
        finally:
            net.train(was)
        return out

    def encode_image(self, x: np.ndarray) -> np.ndarray:
        """(m, bits) uint8 codes in {0, 1}: bit = 1 iff the image net's output is >= 0."""
        return self._encode(x, "image")

    def encode_text(self, y: np.ndarray) -> np.ndarray:
        """(m, bits) uint8 codes in {0, 1}: bit = 1 iff the text net's output is >= 0."""
        return self._encode(y, "text")

    # ---------------------------------------------------------------- persistence
    def state(self) -> dict:
        """Settings, scalars and numpy arrays (network weights as ``img.<name>``/``txt.<name>``)."""
        if self.img_net is None or self.txt_net is None:
            raise PipelineError("djsrh: the model is not fitted; nothing to save")
        st: dict[str, Any] = {
            "name": NAME, "format": STATE_FORMAT, "bits": self.bits, "seed": self.seed,
            "device": self.device_name, "settings": copy.deepcopy(self.settings),
            "dim_x": self.dim_x, "dim_y": self.dim_y,
            "rescale_x": self.rescale_x, "rescale_y": self.rescale_y,
            "mean_x": self.mean_x.copy(), "std_x": self.std_x.copy(),
            "mean_y": self.mean_y.copy(), "std_y": self.std_y.copy(),
        }
        for prefix, net in (("img", self.img_net), ("txt", self.txt_net)):
            for k, v in net.state_dict().items():
                st[f"{prefix}.{k}"] = v.detach().cpu().numpy().copy()
        return st

    @classmethod
    def from_state(cls, state: dict, device: str = "cpu") -> "Model":
        """Rebuild a fitted model from :meth:`state` (on ``device``)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise PipelineError(f"djsrh: not a DJSRH state (expected format {STATE_FORMAT}, got {got!r})")
        try:
            model = cls(int(state["bits"]), state["settings"], int(state["seed"]), device)
            model.dim_x, model.dim_y = int(state["dim_x"]), int(state["dim_y"])
            model.rescale_x, model.rescale_y = bool(state["rescale_x"]), bool(state["rescale_y"])
            for k in ("mean_x", "std_x", "mean_y", "std_y"):
                setattr(model, k, np.asarray(state[k], dtype=np.float32).copy())
            model.img_net = _image_net(model.dim_x, model.settings["img_hidden"], model.bits)
            model.txt_net = _text_net(model.dim_y, model.settings["txt_hidden"], model.bits)
            for prefix, net in (("img", model.img_net), ("txt", model.txt_net)):
                sd = {k: torch.from_numpy(np.asarray(state[f"{prefix}.{k}"], dtype=np.float32).copy())
                      for k in net.state_dict()}
                net.load_state_dict(sd, strict=True)
                net.to(model.device).eval()
        except PipelineError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise PipelineError(f"djsrh: inconsistent state: {type(e).__name__} {msg}".rstrip()) from None
        if model.mean_x.shape != (model.dim_x,) or model.mean_y.shape != (model.dim_y,):
            raise PipelineError("djsrh: inconsistent state: standardisation vectors do not match dim_x/dim_y")
        return model
