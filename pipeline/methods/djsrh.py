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

Settings: :class:`Config` (unknown keys are errors).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.methods.base import Hasher, check_features, check_pair, check_seed, zscore_stats
from pipeline.settings import Settings, setting

log = logging.getLogger(__name__)

_ENCODE_BATCH = 4096


@dataclass(frozen=True)
class Config(Settings):
    """DJSRH's settings (config.yaml ``method_settings.djsrh``): the official MIRFlickr values."""

    beta: float = setting(0.9, "S~ = beta S_I + (1-beta) S_T; official MIRFlickr (WIKI 0.3, NUS-WIDE 0.6)", min=0, max=1)
    eta: float = setting(0.4, "S = (1-eta) S~ + eta S~S~^T/m; official, all data sets", min=0, max=1)
    mu: float = setting(1.5, "scale of the target mu*S; official, all data sets", min=0, min_exclusive=True)
    lambda1: float = setting(0.1, "weight of the image-image term; official MIRFlickr / NUS-WIDE", min=0)
    lambda2: float = setting(0.1, "weight of the text-text term; official MIRFlickr / NUS-WIDE", min=0)
    batch_size: int = setting(32, "official BATCH_SIZE (incomplete last batch dropped, as drop_last=True)", min=2)
    epochs: int = setting(80, "official NUM_EPOCH for MIRFlickr / NUS-WIDE", min=1)
    lr_img: float = setting(0.001, "official LR_IMG (MIRFlickr / NUS-WIDE)", min=0, min_exclusive=True)
    lr_txt: float = setting(0.01, "official LR_TXT", min=0, min_exclusive=True)
    momentum: float = setting(0.9, "official SGD momentum", min=0, max=1, max_exclusive=True)
    weight_decay: float = setting(5e-4, "official SGD weight decay", min=0)
    optimizer_impl: str = setting("auto", "SGD's update kernel: auto (fused where torch has it, else foreach) | "
                                  "fused | foreach | loop (torch's per-tensor CPU default, as before issue 16; the "
                                  "same update up to float rounding)", choices=("auto", "fused", "foreach", "loop"))
    img_hidden: int = setting(0, "0: linear hash layer on the features (fc_encode analogue); > 0: one hidden layer",
                              min=0)
    txt_hidden: int = setting(4096, "official TxtNet hidden width", min=1)
    alpha_schedule: str = setting("sqrt", "sqrt: alpha = sqrt(epoch); constant: alpha = 1 (ablation DJSRH-6)",
                                  choices=("sqrt", "constant"))
    cos_rescale: str = setting("auto", "2cos-1 per modality: auto (iff features >= 0) | always | never",
                               choices=("auto", "always", "never"))
    standardize: bool = setting(False, "z-score network inputs (training rows); official: raw features")


# ------------------------------------------------------------------------- the method's formulas
def cosine_matrix(feats, rescale: bool):
    """Single-modal affinity: m x m cosine similarities of the rows (zero rows give 0); 2c - 1 if ``rescale``."""
    import torch.nn.functional as F

    f = F.normalize(feats, dim=1)
    c = f @ f.T
    return 2.0 * c - 1.0 if rescale else c


def joint_affinity(fx, fy, beta: float, eta: float, mu: float, rescale_x: bool = False, rescale_y: bool = False):
    """Joint-semantics affinity scaled by mu: mu * [(1-eta) S~ + eta S~ S~^T / m], S~ = beta S_I + (1-beta) S_T."""
    m = fx.shape[0]
    s_tilde = beta * cosine_matrix(fx, rescale_x) + (1.0 - beta) * cosine_matrix(fy, rescale_y)
    s = (1.0 - eta) * s_tilde + eta * (s_tilde @ s_tilde.T) / m
    return mu * s


def reconstruction_loss(code_x, code_y, target, lambda1: float, lambda2: float) -> dict:
    """Joint-semantics reconstruction loss on relaxed codes: MSE of code cosines against ``target`` (= mu S).

    Returns {"loss", "loss_it", "loss_ii", "loss_tt"}: loss = loss_it + lambda1 loss_ii +
    lambda2 loss_tt, each the mean over the m x m entries.
    """
    import torch.nn.functional as F

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
def _image_net(dim: int, hidden: int, bits: int):
    from torch import nn

    if hidden == 0:
        return nn.Sequential(nn.Linear(dim, bits))
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))


def _text_net(dim: int, hidden: int, bits: int):
    from torch import nn

    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))


# ------------------------------------------------------------------------- the method
class DJSRH(Hasher):
    """DJSRH image and text hashing networks trained by joint-semantics reconstruction."""

    name = "djsrh"
    Config = Config
    uses_torch = True
    train_seconds = 64  # measured: one demo training, 1 thread
    plot = {"x": "epoch", "columns": ("loss", "loss_it", "loss_ii", "loss_tt")}  # the loss it minimises, and its terms
    variants = {"beta": ("beta",), "eta": ("eta",), "mu": ("mu",), "lrimg": ("lr_img",), "lrtxt": ("lr_txt",),
                "epochs": ("epochs",)}

    def __init__(self, bits: int, config: Config | dict | None = None) -> None:
        super().__init__(bits, config)
        self.img_net_ = self.txt_net_ = None
        self.mean_x_ = self.std_x_ = self.mean_y_ = self.std_y_ = None
        self.rescale_x_ = self.rescale_y_ = None
        self.device = None

    # ---------------------------------------------------------------- construction
    def _build(self, dim_x: int, dim_y: int, seed_init: int, device) -> None:
        """Create both networks (PyTorch default init, as the official code) under the seed."""
        import torch

        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_init)
            self.img_net_ = _image_net(int(dim_x), c.img_hidden, self.bits)
            self.txt_net_ = _text_net(int(dim_y), c.txt_hidden, self.bits)
        self.device = device
        self.img_net_.to(device)
        self.txt_net_.to(device)

    @property
    def dims(self) -> tuple[int, int]:
        return self.img_net_[0].in_features, self.txt_net_[0].in_features

    def _optimizer(self):
        from pipeline.torchkit import make_optimizer

        c = self.config
        return make_optimizer("sgd", [{"params": list(self.img_net_.parameters()), "lr": c.lr_img},
                                      {"params": list(self.txt_net_.parameters()), "lr": c.lr_txt}],
                              c.optimizer_impl, lr=c.lr_img, momentum=c.momentum, weight_decay=c.weight_decay)

    def _batch_loss(self, xb, yb, target, alpha: float) -> dict:
        """Reconstruction loss for standardised network inputs (xb, yb) against mu*S (``target``)."""
        import torch

        code_x = torch.tanh(alpha * self.img_net_(xb))
        code_y = torch.tanh(alpha * self.txt_net_(yb))
        return reconstruction_loss(code_x, code_y, target, self.config.lambda1, self.config.lambda2)

    def _step(self, opt, x_raw, y_raw, xb, yb, alpha: float) -> dict:
        """One SGD step on a mini-batch: mu*S from the raw features, loss on the network outputs."""
        import torch

        c = self.config
        with torch.no_grad():
            target = joint_affinity(x_raw, y_raw, c.beta, c.eta, c.mu, self.rescale_x_, self.rescale_y_)
        terms = self._batch_loss(xb, yb, target, alpha)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        return terms

    # ---------------------------------------------------------------- training
    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0, device: Any = "cpu",
            progress: bool = False) -> list[dict]:
        """Train on paired rows (x_i, y_i); returns one history row per epoch (means of its steps)."""
        import torch

        from pipeline.torchkit import deterministic, progress as progress_bar, resolve_device, seed_streams

        c = self.config
        seed = check_seed(seed, "djsrh")
        xa, ya = check_pair(x, y, "djsrh", min_rows=1)
        n, m = xa.shape[0], c.batch_size
        if n < m:
            raise PipelineError(f"djsrh fit: batch_size {m} exceeds the {n} training pairs")
        device = resolve_device(device)
        seed_init, seed_batch = seed_streams(seed, 2)
        rule = c.cos_rescale
        self.rescale_x_ = rule == "always" or (rule == "auto" and bool((xa >= 0).all()))
        self.rescale_y_ = rule == "always" or (rule == "auto" and bool((ya >= 0).all()))
        ident = lambda a: (np.zeros(a.shape[1], np.float32), np.ones(a.shape[1], np.float32))  # noqa: E731
        self.mean_x_, self.std_x_ = zscore_stats(xa) if c.standardize else ident(xa)
        self.mean_y_, self.std_y_ = zscore_stats(ya) if c.standardize else ident(ya)
        self._build(xa.shape[1], ya.shape[1], seed_init, device)
        X_raw, Y_raw = torch.from_numpy(xa).to(device), torch.from_numpy(ya).to(device)
        X = (X_raw - torch.from_numpy(self.mean_x_).to(device)) / torch.from_numpy(self.std_x_).to(device)
        Y = (Y_raw - torch.from_numpy(self.mean_y_).to(device)) / torch.from_numpy(self.std_y_).to(device)
        gen = torch.Generator()
        gen.manual_seed(seed_batch)
        opt = self._optimizer()
        steps = n // m
        history: list[dict] = []
        bar = progress_bar(c.epochs, f"djsrh {self.bits} bits", progress)
        t_fit = time.perf_counter()
        self.img_net_.train()
        self.txt_net_.train()
        try:
            with deterministic():
                for epoch in range(1, c.epochs + 1):
                    t0 = time.perf_counter()
                    alpha = alpha_at(epoch, c.alpha_schedule)
                    perm = torch.randperm(n, generator=gen).to(device)
                    sums = torch.zeros(4, dtype=torch.float64, device=device)
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
        self.img_net_.eval()
        self.txt_net_.eval()
        log.info("djsrh %d bits: %d epochs x %d steps on %d pairs in %.1f s, final loss %.4f",
                 self.bits, c.epochs, steps, n, time.perf_counter() - t_fit, history[-1]["loss"])
        return history

    # ---------------------------------------------------------------- inference
    def _encode(self, a: Any, which: str) -> np.ndarray:
        import torch

        from pipeline.torchkit import evaluating

        self._require_fitted(f"encode_{which}")
        img = which == "image"
        dim_x, dim_y = self.dims
        arr = check_features(a, f"djsrh encode_{which}", dim_x if img else dim_y, min_rows=0, allow_bool=True)
        net = self.img_net_ if img else self.txt_net_
        mean = torch.from_numpy(self.mean_x_ if img else self.mean_y_).to(self.device)
        std = torch.from_numpy(self.std_x_ if img else self.std_y_).to(self.device)
        out = np.zeros((arr.shape[0], self.bits), dtype=np.uint8)
        with evaluating(net), torch.no_grad():
            for i in range(0, arr.shape[0], _ENCODE_BATCH):
                t = torch.from_numpy(arr[i:i + _ENCODE_BATCH]).to(self.device)
                out[i:i + _ENCODE_BATCH] = (net((t - mean) / std) >= 0).cpu().numpy()  # sign(H), 0 as +1
        return out

    def encode_image(self, x: np.ndarray) -> np.ndarray:
        """(m, bits) uint8 codes in {0, 1}: bit = 1 iff the image net's output is >= 0."""
        return self._encode(x, "image")

    def encode_text(self, y: np.ndarray) -> np.ndarray:
        """(m, bits) uint8 codes in {0, 1}: bit = 1 iff the text net's output is >= 0."""
        return self._encode(y, "text")

    # ---------------------------------------------------------------- persistence
    def state(self) -> dict:
        """Scalars and numpy arrays (network weights as ``img.<name>``/``txt.<name>``)."""
        self._require_fitted("state")
        dim_x, dim_y = self.dims
        st: dict[str, Any] = {"dim_x": dim_x, "dim_y": dim_y, "rescale_x": self.rescale_x_,
                              "rescale_y": self.rescale_y_, "mean_x": self.mean_x_.copy(), "std_x": self.std_x_.copy(),
                              "mean_y": self.mean_y_.copy(), "std_y": self.std_y_.copy()}
        for prefix, net in (("img", self.img_net_), ("txt", self.txt_net_)):
            for k, v in net.state_dict().items():
                st[f"{prefix}.{k}"] = v.detach().cpu().numpy().copy()
        return st

    @classmethod
    def from_state(cls, bits: int, config: Config | dict, state: dict, device: Any = "cpu") -> "DJSRH":
        """Rebuild a fitted model from :meth:`state` (on ``device``)."""
        import torch

        from pipeline.torchkit import resolve_device

        model = cls(bits, config)
        dev = resolve_device(device)
        try:
            dim_x, dim_y = int(state["dim_x"]), int(state["dim_y"])
            model.rescale_x_, model.rescale_y_ = bool(state["rescale_x"]), bool(state["rescale_y"])
            for k in ("mean_x", "std_x", "mean_y", "std_y"):
                setattr(model, f"{k}_", np.asarray(state[k], dtype=np.float32).copy())
            model._build(dim_x, dim_y, 0, dev)
            for prefix, net in (("img", model.img_net_), ("txt", model.txt_net_)):
                sd = {k: torch.from_numpy(np.asarray(state[f"{prefix}.{k}"], dtype=np.float32).copy())
                      for k in net.state_dict()}
                net.load_state_dict(sd, strict=True)
                net.to(dev).eval()
        except PipelineError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise PipelineError(f"djsrh: inconsistent state: {type(e).__name__} {msg}".rstrip()) from None
        if model.mean_x_.shape != (dim_x,) or model.mean_y_.shape != (dim_y,):
            raise PipelineError("djsrh: inconsistent state: standardisation vectors do not match dim_x/dim_y")
        return model
