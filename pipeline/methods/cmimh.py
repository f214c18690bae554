"""CMIMH, Cross-Modal Info-Max Hashing (Hoang, Do, Nguyen & Cheung, IEEE TNNLS 2023), as
``../shared/paper/method.md`` reconstructs it: settings, networks and training in one file.

Networks (:mod:`pipeline.methods.cmimh_networks`): MLP encoders E_x, E_y (two hidden ReLU layers) give logits a and
Bernoulli parameters p = sigmoid(a); Gaussian decoders D_x, D_y (reconstruction); a separable
JS critic T(u_x, u_y) = g(u_x)^T h(u_y) (two hidden Leaky-ReLU layers); one TC discriminator
per modality (FactorVAE style). A network exists only when its loss weight is > 0.

One optimiser step on a mini-batch (x, y) of training pairs (:meth:`CMIMH.fit`):

1. a = E(x), p = sigmoid(a) per modality; b ~ Bernoulli(p) by eq. 4 with the straight-through
   estimator (``Networks.sample``).
2. L = w_rec L_rec(b) + w_mi (-I_JS) + w_kl L_KL + w_tc (L_TC_x + L_TC_y) + w_bal L_bal
   (eq. 14; terms in :mod:`pipeline.methods.cmimh_losses`). Encoders, decoders and the critic
   step on L together (the critic maximises I_JS too, so the same sign is right for it). The TC
   discriminators receive gradients from L_TC but are NOT stepped by it.
3. The discriminators take their own step: BCE of C(p.detach()) (label 1) vs
   C(permute_dims(p.detach())) (label 0), on the same batch's p (before step 2's update).

Every term is checked for NaN/inf before any parameter moves; a bad value raises
PipelineError naming the term, epoch and step. Inference: b = 1[p >= 0.5], deterministic.

Departures from the paper's text, each a setting: ``optimizer: adam`` (the paper used SGD; on
high-dimensional standardised features SGD 1e-2 saturated every bit or stayed at the collapsed
start, SGD 1e-3 learned slowly; Adam 1e-3 learned on every data set and seed we tried) and
``ste: probs`` (the identity straight-through of method.md diverged: its gradient never fades
as a bit saturates, so logits grow without bound). Tuning notes (synthetic two-view data, batch
100, 60 epochs, 16 bits): KL weight 0.5 beat 0.1 clearly (1.0 slightly better still); tc/bal 0.1
and weight decay changed little.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.methods.base import Hasher, check_pair, check_seed
from pipeline.settings import Settings, setting

#: The loss terms of eq. 14, in the order of the paper's text.
TERMS = ("rec", "mi", "kl", "tc", "bal")
#: Warn when the last epoch's mean |2p - 1| is below this: all p sit at 1/2 (collapsed start).
COLLAPSE_CONF = 0.05
HISTORY_FIELDS = ("epoch", "step", "loss", "rec", "mi", "kl", "tc", "bal", "disc", "conf", "seconds")
"""Per-epoch history columns (means over the epoch's steps). ``mi`` is the I_JS estimate
(higher = more shared information; the loss uses -mi). ``tc`` = L_TC_x + L_TC_y, ``bal`` and
``disc`` sum both modalities. ``conf`` = mean |2p - 1|: near 0 means every p sits at 1/2 (the
collapsed start method.md warns about, where the critic gets no signal). Columns of switched-off
terms whose networks do not exist (rec, mi, tc, disc) are None; kl and bal are always logged."""


@dataclass(frozen=True)
class Weights(Settings):
    """The loss weights of eq. 14; 0 switches a term off and does not create its networks."""

    KEY_WORD = "weight"
    rec: float = setting(1.0, "reconstruction (intra-modal MI bound); 0 removes the decoders", min=0)
    mi: float = setting(1.0, "inter-modal Jensen-Shannon MI; 0 removes the critic", min=0)
    kl: float = setting(0.5, "symmetrised Bernoulli KL between the modalities", min=0)
    tc: float = setting(0.1, "Total Correlation (independent bits); 0 removes the discriminators", min=0)
    bal: float = setting(0.1, "bit balance", min=0)


@dataclass(frozen=True)
class Config(Settings):
    """CMIMH's settings (config.yaml ``method_settings.cmimh``); every choice the paper leaves open."""

    hidden: int = setting(1024, "width of the two hidden ReLU layers of encoders and decoders", min=1)
    critic_hidden: int = setting(512, "width of the two hidden Leaky-ReLU layers of critic g and h", min=1)
    critic_dim: int = setting(512, "output size of g and h (T = g(p_x)^T h(p_y)); the paper does not say", min=1)
    disc_hidden: int = setting(512, "width of the two hidden Leaky-ReLU layers of the TC discriminators", min=1)
    leaky_slope: float = setting(0.2, "negative slope of the Leaky-ReLUs (FactorVAE's value; paper silent)", min=0)
    weights: Weights = setting(Weights(), "eq. 14's loss weights {rec, mi, kl, tc, bal}")
    critic_input: str = setting("probs", "probs: critic on the Bernoulli parameters (the paper); samples: on K "
                                "binary STE samples, I_JS averaged over the K pairs (Table I)",
                                choices=("probs", "samples"))
    critic_samples: int = setting(1, "K for critic_input = samples", min=1)
    ste: str = setting("probs", "straight-through gradient of b = 1[a + eps >= 0]: probs (b = hard + p - sg(p), "
                       "db/da = sigmoid'(a)), sigmoid (db/ds = sigmoid'(s)), identity (db/da = 1; diverges)",
                       choices=("identity", "sigmoid", "probs"))
    optimizer: str = setting("adam", "adam (weight decay as L2) | sgd (momentum, weight decay; the paper's)",
                             choices=("sgd", "adam"))
    optimizer_impl: str = setting("auto", "the optimiser's update kernel: auto (fused where torch has it, else "
                                  "foreach) | fused | foreach | loop (torch's per-tensor CPU default, as models before "
                                  "issue 16 were trained; the same update up to float rounding)",
                                  choices=("auto", "fused", "foreach", "loop"))
    lr: float = setting(0.001, "learning rate of encoders, critic and TC discriminators (~0.01 with sgd)",
                        min=0, min_exclusive=True)
    lr_decoder: float = setting(0.001, "learning rate of the decoders", min=0, min_exclusive=True)
    momentum: float = setting(0.9, "SGD momentum", min=0)
    weight_decay: float = setting(5e-4, "weight decay of every parameter group", min=0)
    batch_size: int = setting(100, "mini-batch size (>= 2: I_JS needs negatives)", min=2)
    epochs: int = setting(60, "passes over the training rows (the incomplete last batch is dropped)", min=1)
    iterations: int | None = setting(None, "if set, the total optimiser steps; overrides epochs", min=1)
    dropout: float = setting(0.0, "DEPARTURE (paper: none): dropout rate after each hidden ReLU of the two encoders "
                             "(training only; 0 = no Dropout modules, today's networks)", min=0, max=1, max_exclusive=True)
    lr_schedule: str = setting("constant", "DEPARTURE (paper: constant): constant | cosine (every learning rate, "
                               "the TC discriminators' too, decays to 0 over the run's steps by a half cosine)",
                               choices=("constant", "cosine"))
    rec_norm: str = setting("sum", "sum: L_rec sums the squared error over each modality's features (method.md, the "
                            "Gaussian log-likelihood); DEPARTURE mean: each modality's error averaged over its "
                            "features, so the term does not grow with d and both modalities weigh the same "
                            "(weights.rec then plays the role of d)", choices=("sum", "mean"))
    kl_warmup: int = setting(0, "DEPARTURE (paper: none): the KL weight ramps linearly from 0 to weights.kl over "
                             "this many optimiser steps (KL annealing); 0 = the full weight from the first step",
                             min=0)
    standardize: bool = setting(True, "z-score features with the training split's mean/std (std < 1e-6 -> 1); "
                                "the statistics live in the model, so raw features encode")


def make_networks(dim_x: int, dim_y: int, bits: int, config: Config | dict | None = None):
    """The CMIMH networks for these dimensions (:class:`pipeline.methods.cmimh_networks.Networks`)."""
    from pipeline.methods.cmimh_networks import Networks

    c = config if isinstance(config, Config) else Config.from_dict(config, "cmimh settings")
    return Networks(dim_x, dim_y, bits, c)


# ============================================================================ the method
class CMIMH(Hasher):
    """CMIMH behind the one method interface; the fitted networks are ``net_``."""

    name = "cmimh"
    Config = Config
    uses_torch = True
    train_seconds = 160  # measured: one demo training at 32 bits, 60 epochs, 1 thread
    plot = {"x": "epoch", "columns": None}  # every loss term
    variants = {**{t: (f"weights.{t}",) for t in TERMS}, "lr": ("lr", "lr_decoder"),
                "samples": ("critic_input=samples", "critic_samples"), "epochs": ("epochs", "iterations=None"),
                # settings, not departures: the encoder/decoder width (cmimh-hidden256)
                "hidden": ("hidden",),
                # the documented departure rec_norm (cmimh-recnorm1: mean; 0: sum, method.md), so
                # that a tune grid can hold the faithful point and the departure side by side
                "recnorm": ("rec_norm=sum|mean",)}
    off_terms = TERMS  # cmimh_no_<term>: that weight set to 0 (Table IV)

    def __init__(self, bits: int, config: Config | dict | None = None) -> None:
        super().__init__(bits, config)
        self.net_ = None

    # ------------------------------------------------------------------ training
    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0, device: Any = "cpu",
            progress: bool = False, callback=None) -> list[dict]:
        """Train on paired training features; return the per-epoch history (:data:`HISTORY_FIELDS`).

        ``callback(epoch, net)``, if given, is called after every epoch with the networks
        (:class:`pipeline.methods.cmimh_networks.Networks`; ``net.encode_image`` etc. work on raw
        features); whatever it returns that is a dict is merged into that epoch's history row.
        It must not change the networks (validation curves, early-stopping studies).

        Batches are the rows shuffled each epoch by a generator seeded from ``seed``; the
        incomplete last batch is dropped, so batch_size must not exceed n. Same data + settings +
        seed + thread count give bit-identical codes on one CPU.
        """
        import torch

        from pipeline.torchkit import deterministic, resolve_device, seed_streams

        c = self.config
        seed = check_seed(seed, "cmimh")
        xa, ya = check_pair(x, y, "cmimh", min_rows=1, allow_bool=False)
        n, B = xa.shape[0], c.batch_size
        if n < B:
            raise PipelineError(f"cmimh fit: batch_size {B} exceeds the {n} training pairs")
        device = resolve_device(device)
        seed_init, seed_noise, seed_batch = seed_streams(seed, 3)
        with deterministic():
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed_init)
                net = make_networks(xa.shape[1], ya.shape[1], self.bits, c)
            net.to(device)
            X, Y = torch.from_numpy(xa).to(device), torch.from_numpy(ya).to(device)
            net.set_standardization(X, Y)
            with torch.no_grad():
                X, Y = net.standardize_x(X), net.standardize_y(Y)
            gen = torch.Generator(device=device)
            gen.manual_seed(seed_noise)
            gen_batch = torch.Generator()
            gen_batch.manual_seed(seed_batch)
            opt, opt_disc = _optimizers(net, c)
            history = self._epochs(net, X, Y, gen, gen_batch, opt, opt_disc, progress, callback)
        net.eval()
        self.net_ = net
        last = history[-1]
        if last["conf"] < COLLAPSE_CONF:
            mi = "" if last["mi"] is None else f", I_JS = {last['mi']:.3f} (-2 log 2 = no critic signal)"
            rec = "" if last.get("rec") is None else f" ({last['rec']:.1f})"
            warnings.warn(f"cmimh training ({self.bits} bits) ended collapsed: mean |2p-1| = {last['conf']:.3f}"
                          f"{mi}: the codes carry little information; where the summed reconstruction{rec} "
                          "outweighs MI and KL (high-dimensional features) try rec_norm: mean (a documented "
                          "departure) or a smaller weights.rec; else optimizer adam or more epochs",
                          RuntimeWarning, stacklevel=2)
        return history

    def _epochs(self, net, X, Y, gen, gen_batch, opt, opt_disc, progress: bool, callback=None) -> list[dict]:
        import torch

        from pipeline.torchkit import progress as progress_bar

        c, n = self.config, X.shape[0]
        B = c.batch_size
        steps_per_epoch = n // B
        total = c.iterations if c.iterations is not None else c.epochs * steps_per_epoch
        epochs = math.ceil(total / steps_per_epoch)
        history: list[dict] = []
        step = 0
        schedule = _lr_schedule(c, total, [o for o in (opt, opt_disc) if o is not None])
        net.train()
        bar = progress_bar(epochs, f"cmimh {self.bits} bits", progress)
        try:
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                perm = torch.randperm(n, generator=gen_batch).to(X.device)
                sums: dict[str, float] = {}
                count = 0
                for i in range(steps_per_epoch):
                    if step >= total:
                        break
                    idx = perm[i * B:(i + 1) * B]
                    schedule(step)
                    vals = _step(net, X[idx], Y[idx], c, gen, opt, opt_disc, epoch, step + 1,
                                 kl_scale=min(1.0, (step + 1) / c.kl_warmup) if c.kl_warmup else 1.0)
                    step += 1
                    count += 1
                    for k, v in vals.items():
                        sums[k] = sums.get(k, 0.0) + v
                row: dict[str, Any] = {"epoch": epoch, "step": step}
                for k in HISTORY_FIELDS[2:-1]:
                    row[k] = sums[k] / count if k in sums else None
                row["seconds"] = time.perf_counter() - t0
                if callback is not None:
                    extra = callback(epoch, net)
                    net.train()
                    if isinstance(extra, dict):
                        row.update(extra)
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4g}", mi="-" if row["mi"] is None else f"{row['mi']:.3g}",
                                conf=f"{row['conf']:.2f}")
                bar.update(1)
        finally:
            bar.close()
        return history

    # ------------------------------------------------------------------ coding
    def probs_image(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Bernoulli parameters p for raw image features, float32 (n, bits)."""
        self._require_fitted("encode_image")
        return self.net_.probs_image(x, batch_size)

    def probs_text(self, y: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Bernoulli parameters p for raw text features, float32 (n, bits)."""
        self._require_fitted("encode_text")
        return self.net_.probs_text(y, batch_size)

    def encode_image(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Deterministic codes b = 1[p >= 0.5] for raw image features, uint8 0/1 (n, bits)."""
        self._require_fitted("encode_image")
        return self.net_.encode_image(x, batch_size)

    def encode_text(self, y: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Deterministic codes b = 1[p >= 0.5] for raw text features, uint8 0/1 (n, bits)."""
        self._require_fitted("encode_text")
        return self.net_.encode_text(y, batch_size)

    def diagnostics(self, x_db: np.ndarray, y_db: np.ndarray, codes_image: np.ndarray,
                    codes_text: np.ndarray, batch_size: int = 4096) -> dict:
        """Table II diagnostics on the database: Corr MSE of the codes and the TC estimate
        mean_i logit C(p_i) per modality (None when the model has no discriminators, tc = 0)."""
        import torch

        from pipeline.methods import cmimh_losses as L
        from pipeline.torchkit import evaluating

        out = super().diagnostics(x_db, y_db, codes_image, codes_text)
        net = self.net_
        if net.disc_x is None or net.disc_y is None:
            return out
        with evaluating(net), torch.no_grad():
            for key, disc, p in (("tc_image", net.disc_x, self.probs_image(x_db, batch_size)),
                                 ("tc_text", net.disc_y, self.probs_text(y_db, batch_size))):
                t = torch.from_numpy(p)
                logits = [disc(t[i:i + batch_size].to(net.device)).cpu() for i in range(0, t.shape[0], batch_size)]
                out[key] = float(L.tc_estimate(torch.cat(logits)))
        return out

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        self._require_fitted("state")
        return {"dims": {"image": self.net_.dim_x, "text": self.net_.dim_y},
                "state_dict": {k: v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}}

    @classmethod
    def from_state(cls, bits: int, config: Config | dict, state: dict, device: Any = "cpu") -> "CMIMH":
        import torch

        from pipeline.torchkit import resolve_device

        model = cls(bits, config)
        net = make_networks(int(state["dims"]["image"]), int(state["dims"]["text"]), model.bits, model.config)
        net.load_state_dict({k: torch.from_numpy(np.asarray(v).copy()) for k, v in state["state_dict"].items()},
                            strict=True)
        model.net_ = net.to(resolve_device(device)).eval()
        return model


def _optimizers(net, c: Config):
    from pipeline.torchkit import make_optimizer

    main = [{"params": net.encoder_parameters() + net.critic_parameters(), "lr": c.lr},
            {"params": net.decoder_parameters(), "lr": c.lr_decoder}]
    main = [g for g in main if g["params"]]
    disc = net.discriminator_parameters()

    def make(groups: list[dict]):
        if c.optimizer == "sgd":
            return make_optimizer("sgd", groups, c.optimizer_impl, lr=c.lr, momentum=c.momentum,
                                  weight_decay=c.weight_decay)
        return make_optimizer("adam", groups, c.optimizer_impl, lr=c.lr, weight_decay=c.weight_decay)

    return make(main), (make([{"params": disc, "lr": c.lr}]) if disc else None)


def _lr_schedule(c: Config, total: int, optimizers: list):
    """A function step -> None that sets every parameter group's learning rate for step ``step``
    (0-based) of ``total``: constant (nothing to do) or a half cosine from the group's initial rate
    to 0 (``lr_schedule: cosine``)."""
    if c.lr_schedule == "constant":
        return lambda step: None
    groups = [g for o in optimizers for g in o.param_groups]
    base = [g["lr"] for g in groups]

    def set_lr(step: int) -> None:
        f = 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
        for g, b in zip(groups, base):
            g["lr"] = b * f

    return set_lr


def _step(net, xb, yb, c: Config, gen, opt, opt_disc, epoch: int, step: int,
          kl_scale: float = 1.0) -> dict[str, float]:
    """One training step; returns the terms' values (python floats). ``kl_scale`` multiplies the
    KL weight (the ``kl_warmup`` ramp; the logged kl is the unweighted term)."""
    import torch

    from pipeline.methods import cmimh_losses as L

    w = c.weights
    a_x, a_y = net.enc_x(xb), net.enc_y(yb)
    p_x, p_y = torch.sigmoid(a_x), torch.sigmoid(a_y)
    terms: dict[str, Any] = {}
    if w.rec > 0:
        b_x, b_y = net.sample(a_x, gen), net.sample(a_y, gen)
        terms["rec"] = (L.reconstruction(xb, net.dec_x(b_x), c.rec_norm)
                        + L.reconstruction(yb, net.dec_y(b_y), c.rec_norm))
    if w.mi > 0:
        if c.critic_input == "probs":
            terms["mi"] = L.js_mi(net.critic_scores(p_x, p_y))
        else:  # I_JS averaged over K pairs of fresh binary samples (gradients through the STE)
            K = c.critic_samples
            terms["mi"] = sum(L.js_mi(net.critic_scores(net.sample(a_x, gen), net.sample(a_y, gen)))
                              for _ in range(K)) / K
    terms["kl"] = L.sym_bernoulli_kl(p_x, p_y)
    terms["bal"] = L.balance(p_x) + L.balance(p_y)
    if w.tc > 0:
        terms["tc"] = L.tc_estimate(net.disc_x(p_x)) + L.tc_estimate(net.disc_y(p_y))
    weight = {t: getattr(w, t) for t in TERMS}
    weight["kl"] *= kl_scale
    loss = sum((-weight[k] if k == "mi" else weight[k]) * t for k, t in terms.items() if weight[k] > 0)
    if not isinstance(loss, torch.Tensor):  # every weight 0: nothing to learn
        raise PipelineError("cmimh training: all loss weights are 0")
    terms["loss"] = loss
    if opt_disc is not None:
        px_d, py_d = p_x.detach(), p_y.detach()
        terms["disc"] = (L.tc_discriminator_loss(net.disc_x(px_d), net.disc_x(L.permute_dims(px_d, gen)))
                         + L.tc_discriminator_loss(net.disc_y(py_d), net.disc_y(L.permute_dims(py_d, gen))))
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
