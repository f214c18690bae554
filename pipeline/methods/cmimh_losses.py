"""CMIMH loss terms as pure functions on tensors (../shared/paper/method.md, "Loss terms"),
used by :mod:`pipeline.methods.cmimh`.

No function here owns parameters or global state, so each can be tested against a hand
computation. Batch dimension first everywhere; ``p`` are Bernoulli parameters in (0, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction(x: torch.Tensor, x_hat: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """L_rec = (1/n) sum_i ||x_i - x_hat_i||^2: squared error SUMMED over features, mean over batch.

    ``reduction="mean"`` (CMIMH's ``rec_norm: mean`` departure) divides by the feature dimension d:
    the per-feature mean squared error, averaged over the batch.

    The sum is the Gaussian decoder's log-likelihood (eq. 2, 3) up to constants. Averaging
    over dimensions instead shrinks this term by d (~1000x) so the KL and balance terms win
    and every item gets the same code (method.md, measured in the prototype).
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"reconstruction: shapes differ {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reconstruction: reduction must be 'sum' or 'mean', not {reduction!r}")
    err = (x - x_hat).pow(2).sum(dim=1).mean()
    return err / x.shape[1] if reduction == "mean" else err


def js_mi(scores: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon MI lower bound (eq. 5) from an n x n critic score matrix S = G H^T.

    I_JS = mean_i(-softplus(-S_ii)) - mean_{i != j}(softplus(S_ij)):
    diagonal pairs are draws from the joint, off-diagonal pairs from the product of marginals.
    Needs n >= 2 (no negatives otherwise). Maximised by both encoders and critic.
    """
    n = scores.shape[0]
    if scores.dim() != 2 or scores.shape[1] != n or n < 2:
        raise ValueError(f"js_mi: need a square score matrix with n >= 2, got {tuple(scores.shape)}")
    eye = torch.eye(n, dtype=torch.bool, device=scores.device)
    pos = -F.softplus(-scores[eye]).mean()
    neg = F.softplus(scores[~eye]).mean()
    return pos - neg


def sym_bernoulli_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Symmetrised KL between multivariate Bernoullis (eq. 6, 7), mean over the batch.

    KL(p||q) = sum_k p_k log(p_k/q_k) + (1-p_k) log((1-p_k)/(1-q_k)); returns
    mean_i [KL(p_i||q_i) + KL(q_i||p_i)] with p, q clamped to [eps, 1-eps] so saturated
    sigmoids give a large finite value instead of inf.
    """
    p = p.clamp(eps, 1.0 - eps)
    q = q.clamp(eps, 1.0 - eps)
    # KL(p||q) + KL(q||p) = sum_k (p_k - q_k) (logit p_k - logit q_k)
    lp = torch.log(p) - torch.log1p(-p)
    lq = torch.log(q) - torch.log1p(-q)
    return ((p - q) * (lp - lq)).sum(dim=1).mean()


def balance(p: torch.Tensor) -> torch.Tensor:
    """Balance regulariser (eq. 13): sum_k | mean_i p_ik - 1/2 |, one modality."""
    return (p.mean(dim=0) - 0.5).abs().sum()


def permute_dims(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample from the product of marginals: permute every column independently over the batch.

    Each column keeps its multiset of values; the association between columns of one row is
    broken (FactorVAE's trick for the TC density ratio, eq. 11).
    """
    n, k = p.shape
    # one random key per entry, argsort down each column = an independent permutation per column
    keys = torch.rand((n, k), generator=generator, device=p.device)
    idx = keys.argsort(dim=0)
    return torch.gather(p, 0, idx)


def tc_discriminator_loss(logits_joint: torch.Tensor, logits_perm: torch.Tensor) -> torch.Tensor:
    """Discriminator BCE: joint samples labelled 1, dimension-permuted samples labelled 0.

    = 0.5 * [mean softplus(-l_joint) + mean softplus(l_perm)] (average of both halves' BCE).
    """
    lj = logits_joint.reshape(-1)
    lp = logits_perm.reshape(-1)
    return 0.5 * (
        F.binary_cross_entropy_with_logits(lj, torch.ones_like(lj))
        + F.binary_cross_entropy_with_logits(lp, torch.zeros_like(lp))
    )


def tc_estimate(logits_joint: torch.Tensor) -> torch.Tensor:
    """TC by the density-ratio trick (eq. 12): mean_i logit C(p_i) = mean log C/(1-C)."""
    return logits_joint.reshape(-1).mean()
