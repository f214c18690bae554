"""The CMIMH model: encoders, decoders, JS critic and TC discriminators (method.md).

Settings (the ``cmimh:`` section of config.yaml; every choice the paper leaves open is a key):

=================  =========  ===========================================================
key                default    meaning / why
=================  =========  ===========================================================
hidden             1024       width of the two hidden ReLU layers of encoders and decoders
critic_hidden      512        width of the two hidden Leaky-ReLU layers of critic g and h
critic_dim         512        output size of g and h (T = g(p_x)^T h(p_y)); the paper does
                              not say; we use the hidden width (a 512-d embedding)
disc_hidden        512        width of the two hidden Leaky-ReLU layers of the TC discriminators
leaky_slope        0.2        negative slope of the Leaky-ReLUs (FactorVAE's value; paper silent)
weights            see below  {rec, mi, kl, tc, bal} of eq. 14; 0 switches a term off AND
                              does not create its networks (rec -> decoders, mi -> critic,
                              tc -> discriminators)
critic_input       probs      probs: critic on Bernoulli parameters p (paper's choice);
                              samples: critic on K binary STE samples (Table I ablation);
                              I_JS is then averaged over the K sample pairs
critic_samples     1          K for critic_input = samples
ste                probs      straight-through gradient of b = 1[a + eps >= 0] = 1[p - u >= 0]:
                              probs: the threshold on p - u passes as identity (Bengio et al.
                              2013's ST), db/dp = 1, i.e. b = hard + p - sg(p), db/da = sigmoid'(a);
                              sigmoid: db/ds = sigmoid'(s) with s = a + eps (noisy surrogate);
                              identity: db/ds = 1, db/da = 1 (method.md's literal reading). In
                              our runs identity diverged (logits -> inf, NaN) with SGD 1e-2 and
                              1e-3 and learned poorly with Adam: its gradient never fades as a
                              bit saturates, so logits grow without bound. probs/sigmoid learn.
optimizer          adam       adam (weight decay as L2) | sgd (momentum, weight decay; the
                              paper's). Adam is the default because SGD's step scales with the
                              summed reconstruction error, i.e. with the feature dimension: on
                              high-dimensional standardised features SGD 1e-2 saturated every
                              bit or stayed at the collapsed start, SGD 1e-3 learned slowly;
                              Adam 1e-3 learned on every data set and seed we tried
lr                 0.001      encoders, critic, TC discriminators (use ~0.01 with sgd)
lr_decoder         0.001      decoders
momentum           0.9        SGD only
weight_decay       5e-4       all parameter groups
batch_size         100        mini-batch size (>= 2: I_JS needs negatives)
epochs             60         passes over the training rows (incomplete last batch dropped)
iterations         None       if set, total optimiser steps; overrides ``epochs``
standardize        true       z-score features with the training split's mean/std (std < 1e-6
                              -> 1); the statistics live in model buffers so raw features encode
=================  =========  ===========================================================

Default weights: rec 1, mi 1, kl 0.5, tc 0.1, bal 0.1 (see train.py's tuning notes).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pipeline.errors import PipelineError

WEIGHT_KEYS = ("rec", "mi", "kl", "tc", "bal")

DEFAULTS: dict[str, Any] = {
    "hidden": 1024,
    "critic_hidden": 512,
    "critic_dim": 512,
    "disc_hidden": 512,
    "leaky_slope": 0.2,
    "weights": {"rec": 1.0, "mi": 1.0, "kl": 0.5, "tc": 0.1, "bal": 0.1},
    "critic_input": "probs",
    "critic_samples": 1,
    "ste": "probs",
    "optimizer": "adam",
    "lr": 0.001,
    "lr_decoder": 0.001,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "batch_size": 100,
    "epochs": 60,
    "iterations": None,
    "standardize": True,
}

_CHOICES = {
    "critic_input": ("probs", "samples"),
    "ste": ("identity", "sigmoid", "probs"),
    "optimizer": ("sgd", "adam"),
}
_POS_INT = ("hidden", "critic_hidden", "critic_dim", "disc_hidden", "critic_samples", "epochs")
_NONNEG_FLOAT = ("leaky_slope", "momentum", "weight_decay")
_POS_FLOAT = ("lr", "lr_decoder")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _coerce_num(v: Any) -> Any:
    """Accept numeric strings: PyYAML reads ``1e-3`` (no dot) as the string '1e-3'."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def resolve_settings(settings: dict | None) -> dict:
    """Fill defaults and validate; raise a one-line PipelineError for unknown keys or bad values."""
    settings = {} if settings is None else settings
    if not isinstance(settings, dict):
        raise PipelineError(f"cmimh settings must be a mapping, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise PipelineError(f"cmimh settings: unknown key(s) {', '.join(map(str, unknown))}; "
                            f"known: {', '.join(DEFAULTS)}")
    out = copy.deepcopy(DEFAULTS)
    for k, v in settings.items():
        if k != "weights":
            out[k] = v
    w = settings.get("weights", {})
    if w is None:
        w = {}
    if not isinstance(w, dict):
        raise PipelineError("cmimh settings: weights must be a mapping {rec, mi, kl, tc, bal}")
    bad = sorted(set(w) - set(WEIGHT_KEYS))
    if bad:
        raise PipelineError(f"cmimh settings: unknown weight(s) {', '.join(map(str, bad))}; "
                            f"known: {', '.join(WEIGHT_KEYS)}")
    for k, v in w.items():
        v = _coerce_num(v)
        if not _is_num(v) or not math.isfinite(float(v)) or float(v) < 0:
            raise PipelineError(f"cmimh settings: weights.{k} must be a finite number >= 0, got {v!r}")
        out["weights"][k] = float(v)

    for k in _POS_INT:
        if not _is_int(out[k]) or out[k] < 1:
            raise PipelineError(f"cmimh settings: {k} must be an integer >= 1, got {out[k]!r}")
        out[k] = int(out[k])
    if not _is_int(out["batch_size"]) or out["batch_size"] < 2:
        raise PipelineError(f"cmimh settings: batch_size must be an integer >= 2 "
                            f"(I_JS needs negatives), got {out['batch_size']!r}")
    out["batch_size"] = int(out["batch_size"])
    if out["iterations"] is not None:
        if not _is_int(out["iterations"]) or out["iterations"] < 1:
            raise PipelineError(f"cmimh settings: iterations must be null or an integer >= 1, "
                                f"got {out['iterations']!r}")
        out["iterations"] = int(out["iterations"])
    for k in _POS_FLOAT + _NONNEG_FLOAT:
        v = out[k] = _coerce_num(out[k])
        if not _is_num(v) or not math.isfinite(float(v)) or (k in _POS_FLOAT and float(v) <= 0) \
                or float(v) < 0:
            need = "> 0" if k in _POS_FLOAT else ">= 0"
            raise PipelineError(f"cmimh settings: {k} must be a finite number {need}, got {v!r}")
        out[k] = float(v)
    for k, choices in _CHOICES.items():
        if out[k] not in choices:
            raise PipelineError(f"cmimh settings: {k} must be one of {', '.join(choices)}, "
                                f"got {out[k]!r}")
    if not isinstance(out["standardize"], bool):
        raise PipelineError(f"cmimh settings: standardize must be true or false, "
                            f"got {out['standardize']!r}")
    return out


def _mlp(d_in: int, hidden: int, d_out: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), copy.deepcopy(act),
        nn.Linear(hidden, hidden), copy.deepcopy(act),
        nn.Linear(hidden, d_out),
    )


def _as_tensor(x: np.ndarray | torch.Tensor, dim: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() != 2 or t.shape[1] != dim:
        raise PipelineError(f"{what}: expected an (n, {dim}) array, got shape {tuple(t.shape)}")
    return t


class CMIMH(nn.Module):
    """Cross-Modal Info-Max Hashing networks; the losses live in losses.py, training in train.py.

    Modules (created only when their loss weight is > 0):
    ``enc_x, enc_y`` (always), ``dec_x, dec_y`` (rec), ``critic_g, critic_h`` (mi),
    ``disc_x, disc_y`` (tc). Buffers ``mean_x, std_x, mean_y, std_y`` hold the training
    split's standardisation (identity until :meth:`set_standardization`).
    """

    def __init__(self, dim_x: int, dim_y: int, bits: int, settings: dict | None = None) -> None:
        super().__init__()
        s = resolve_settings(settings)
        if not _is_int(bits) or bits < 1:
            raise PipelineError(f"cmimh: bits must be an integer >= 1, got {bits!r}")
        for name, d in (("image", dim_x), ("text", dim_y)):
            if not _is_int(d) or d < 1:
                raise PipelineError(f"cmimh: {name} feature dimension must be >= 1, got {d!r}")
        self.settings = s
        self.bits, self.dim_x, self.dim_y = int(bits), int(dim_x), int(dim_y)
        w = s["weights"]
        relu, lrelu = nn.ReLU(), nn.LeakyReLU(s["leaky_slope"])
        self.enc_x = _mlp(dim_x, s["hidden"], bits, relu)
        self.enc_y = _mlp(dim_y, s["hidden"], bits, relu)
        self.dec_x = _mlp(bits, s["hidden"], dim_x, relu) if w["rec"] > 0 else None
        self.dec_y = _mlp(bits, s["hidden"], dim_y, relu) if w["rec"] > 0 else None
        self.critic_g = _mlp(bits, s["critic_hidden"], s["critic_dim"], lrelu) if w["mi"] > 0 else None
        self.critic_h = _mlp(bits, s["critic_hidden"], s["critic_dim"], lrelu) if w["mi"] > 0 else None
        self.disc_x = _mlp(bits, s["disc_hidden"], 1, lrelu) if w["tc"] > 0 else None
        self.disc_y = _mlp(bits, s["disc_hidden"], 1, lrelu) if w["tc"] > 0 else None
        self.register_buffer("mean_x", torch.zeros(dim_x))
        self.register_buffer("std_x", torch.ones(dim_x))
        self.register_buffer("mean_y", torch.zeros(dim_y))
        self.register_buffer("std_y", torch.ones(dim_y))

    # ---------------------------------------------------------------- parameter groups
    def _params(self, *names: str) -> list[nn.Parameter]:
        mods = [getattr(self, n) for n in names]
        return [p for m in mods if m is not None for p in m.parameters()]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return self._params("enc_x", "enc_y")

    def decoder_parameters(self) -> list[nn.Parameter]:
        return self._params("dec_x", "dec_y")

    def critic_parameters(self) -> list[nn.Parameter]:
        return self._params("critic_g", "critic_h")

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return self._params("disc_x", "disc_y")

    @property
    def device(self) -> torch.device:
        return self.mean_x.device

    # ---------------------------------------------------------------- standardisation
    @torch.no_grad()
    def set_standardization(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Store per-feature mean/std of the training split (identity if standardize is false).

        Features with std < 1e-6 (constant in training) keep std 1 to avoid dividing by 0.
        """
        if not self.settings["standardize"]:
            return
        for t, m, sd in ((x, self.mean_x, self.std_x), (y, self.mean_y, self.std_y)):
            t = t.to(device=m.device, dtype=torch.float64)
            std = t.std(dim=0, unbiased=False)
            m.copy_(t.mean(dim=0).to(m.dtype))
            sd.copy_(torch.where(std < 1e-6, torch.ones_like(std), std).to(sd.dtype))

    def standardize_x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean_x) / self.std_x

    def standardize_y(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean_y) / self.std_y

    # ---------------------------------------------------------------- training-time pieces
    def sample(self, a: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """b ~ Bernoulli(sigmoid(a)) by eq. 4 with a straight-through gradient (``ste``).

        eps = log u - log(1-u) (logistic), s = a + eps, forward b = 1[s >= 0] in {0,1}.
        """
        u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
        u = u.clamp(1e-7, 1.0 - 1e-7)
        s = a + (torch.log(u) - torch.log1p(-u))
        hard = (s >= 0).to(a.dtype)
        mode = self.settings["ste"]
        if mode == "identity":
            surrogate = s
        elif mode == "sigmoid":
            surrogate = torch.sigmoid(s)
        else:  # probs
            surrogate = torch.sigmoid(a)
        return hard + (surrogate - surrogate.detach())

    def critic_scores(self, u_x: torch.Tensor, u_y: torch.Tensor) -> torch.Tensor:
        """Separable critic: S_ij = g(u_x,i)^T h(u_y,j), an n x n matrix."""
        if self.critic_g is None or self.critic_h is None:
            raise RuntimeError("critic not created (weights.mi == 0)")
        return self.critic_g(u_x) @ self.critic_h(u_y).T

    # ---------------------------------------------------------------- inference
    def _probs(self, which: str, feats: np.ndarray | torch.Tensor, batch_size: int) -> torch.Tensor:
        dim = self.dim_x if which == "x" else self.dim_y
        t = _as_tensor(feats, dim, "encode_image" if which == "x" else "encode_text")
        enc = self.enc_x if which == "x" else self.enc_y
        std = self.standardize_x if which == "x" else self.standardize_y
        was_training = self.training
        self.eval()
        out = []
        try:
            with torch.no_grad():
                for i in range(0, t.shape[0], batch_size):
                    xb = t[i:i + batch_size].to(device=self.device, dtype=torch.float32)
                    out.append(torch.sigmoid(enc(std(xb))).cpu())
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.bits)

    def probs_image(self, x: np.ndarray | torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """Bernoulli parameters p for raw image features, float32 (n, bits)."""
        return self._probs("x", x, batch_size).numpy()

    def probs_text(self, y: np.ndarray | torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """Bernoulli parameters p for raw text features, float32 (n, bits)."""
        return self._probs("y", y, batch_size).numpy()

    def encode_image(self, x: np.ndarray | torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """Deterministic codes b = 1[p >= 0.5] for raw image features, uint8 0/1 (n, bits)."""
        return (self._probs("x", x, batch_size) >= 0.5).to(torch.uint8).numpy()

    def encode_text(self, y: np.ndarray | torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """Deterministic codes b = 1[p >= 0.5] for raw text features, uint8 0/1 (n, bits)."""
        return (self._probs("y", y, batch_size) >= 0.5).to(torch.uint8).numpy()
