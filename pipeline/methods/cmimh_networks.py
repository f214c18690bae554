"""CMIMH's networks as one torch module (:mod:`pipeline.methods.cmimh` holds the settings and the
training loop; this file is imported only when a CMIMH model is built, so that reading settings
or method names never imports torch)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.methods.base import check_features
from pipeline.methods.cmimh import Config


def _mlp(d_in: int, hidden: int, d_out: int, act: nn.Module, dropout: float = 0.0) -> nn.Sequential:
    """Two hidden layers; with ``dropout`` > 0 a Dropout after each hidden activation (only then:
    without it the module indices, hence the saved state_dict keys, are today's)."""
    drop = [nn.Dropout(dropout)] if dropout > 0 else []
    return nn.Sequential(nn.Linear(d_in, hidden), copy.deepcopy(act), *copy.deepcopy(drop),
                         nn.Linear(hidden, hidden), copy.deepcopy(act), *copy.deepcopy(drop),
                         nn.Linear(hidden, d_out))


class Networks(nn.Module):
    """Encoders, decoders, critic and TC discriminators, and the training split's standardisation.

    Modules (created only when their loss weight is > 0): ``enc_x, enc_y`` (always),
    ``dec_x, dec_y`` (rec), ``critic_g, critic_h`` (mi), ``disc_x, disc_y`` (tc). Buffers
    ``mean_x, std_x, mean_y, std_y`` (identity until :meth:`set_standardization`).
    """

    def __init__(self, dim_x: int, dim_y: int, bits: int, config: Config) -> None:
        super().__init__()
        c = config
        for name, d in (("image", dim_x), ("text", dim_y)):
            if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
                raise PipelineError(f"cmimh: {name} feature dimension must be >= 1, got {d!r}")
        self.config, self.bits, self.dim_x, self.dim_y = c, int(bits), int(dim_x), int(dim_y)
        w = c.weights
        relu, lrelu = nn.ReLU(), nn.LeakyReLU(c.leaky_slope)
        self.enc_x = _mlp(dim_x, c.hidden, bits, relu, c.dropout)
        self.enc_y = _mlp(dim_y, c.hidden, bits, relu, c.dropout)
        self.dec_x = _mlp(bits, c.hidden, dim_x, relu) if w.rec > 0 else None
        self.dec_y = _mlp(bits, c.hidden, dim_y, relu) if w.rec > 0 else None
        self.critic_g = _mlp(bits, c.critic_hidden, c.critic_dim, lrelu) if w.mi > 0 else None
        self.critic_h = _mlp(bits, c.critic_hidden, c.critic_dim, lrelu) if w.mi > 0 else None
        self.disc_x = _mlp(bits, c.disc_hidden, 1, lrelu) if w.tc > 0 else None
        self.disc_y = _mlp(bits, c.disc_hidden, 1, lrelu) if w.tc > 0 else None
        self.register_buffer("mean_x", torch.zeros(dim_x))
        self.register_buffer("std_x", torch.ones(dim_x))
        self.register_buffer("mean_y", torch.zeros(dim_y))
        self.register_buffer("std_y", torch.ones(dim_y))

    # ------------------------------------------------------------ parameter groups
    def _params(self, *names: str) -> list:
        return [p for n in names if getattr(self, n) is not None for p in getattr(self, n).parameters()]

    def encoder_parameters(self) -> list:
        return self._params("enc_x", "enc_y")

    def decoder_parameters(self) -> list:
        return self._params("dec_x", "dec_y")

    def critic_parameters(self) -> list:
        return self._params("critic_g", "critic_h")

    def discriminator_parameters(self) -> list:
        return self._params("disc_x", "disc_y")

    @property
    def device(self):
        return self.mean_x.device

    # ------------------------------------------------------------ standardisation
    @torch.no_grad()
    def set_standardization(self, x, y) -> None:
        """Per-feature mean/std of the training split (identity if standardize is false)."""
        if not self.config.standardize:
            return
        for t, m, sd in ((x, self.mean_x, self.std_x), (y, self.mean_y, self.std_y)):
            t = t.to(device=m.device, dtype=torch.float64)
            std = t.std(dim=0, unbiased=False)
            m.copy_(t.mean(dim=0).to(m.dtype))
            sd.copy_(torch.where(std < 1e-6, torch.ones_like(std), std).to(sd.dtype))

    def standardize_x(self, x):
        return (x - self.mean_x) / self.std_x

    def standardize_y(self, y):
        return (y - self.mean_y) / self.std_y

    # ------------------------------------------------------------ training-time pieces
    def sample(self, a, generator=None):
        """b ~ Bernoulli(sigmoid(a)) by eq. 4 with a straight-through gradient (``ste``):
        eps = log u - log(1-u) (logistic), s = a + eps, forward b = 1[s >= 0] in {0,1}."""
        u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype).clamp(1e-7, 1.0 - 1e-7)
        s = a + (torch.log(u) - torch.log1p(-u))
        hard = (s >= 0).to(a.dtype)
        mode = self.config.ste
        surrogate = s if mode == "identity" else (torch.sigmoid(s) if mode == "sigmoid" else torch.sigmoid(a))
        return hard + (surrogate - surrogate.detach())

    def critic_scores(self, u_x, u_y):
        """Separable critic: S_ij = g(u_x,i)^T h(u_y,j), an n x n matrix."""
        if self.critic_g is None or self.critic_h is None:
            raise RuntimeError("critic not created (weights.mi == 0)")
        return self.critic_g(u_x) @ self.critic_h(u_y).T

    # ------------------------------------------------------------ inference
    def probs(self, which: str, feats, batch_size: int = 4096) -> np.ndarray:
        """Bernoulli parameters p (n, bits) float32 for raw features of ``which`` ("x" or "y")."""
        from pipeline.torchkit import batched, evaluating

        image = which == "x"
        a = check_features(feats, "encode_image" if image else "encode_text",
                           self.dim_x if image else self.dim_y, min_rows=0)
        enc, std = (self.enc_x, self.standardize_x) if image else (self.enc_y, self.standardize_y)
        with evaluating(self):
            p = batched(lambda t: torch.sigmoid(enc(std(t))), a, self.device, batch_size)
        return p if len(a) else np.zeros((0, self.bits), np.float32)

    def probs_image(self, x, batch_size: int = 4096) -> np.ndarray:
        return self.probs("x", x, batch_size)

    def probs_text(self, y, batch_size: int = 4096) -> np.ndarray:
        return self.probs("y", y, batch_size)

    def encode_image(self, x, batch_size: int = 4096) -> np.ndarray:
        """Deterministic codes b = 1[p >= 0.5], uint8 0/1 (n, bits)."""
        return (self.probs("x", x, batch_size) >= 0.5).astype(np.uint8)

    def encode_text(self, y, batch_size: int = 4096) -> np.ndarray:
        return (self.probs("y", y, batch_size) >= 0.5).astype(np.uint8)
