"""The shared torch helpers (pipeline/torchkit.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.torchkit import evaluating, resolve_device, seed_streams


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(PipelineError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(PipelineError, match="CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(PipelineError, match="unknown device"):
        resolve_device("gpu")


def test_seed_streams_are_independent_and_reproducible():
    a, b = seed_streams(3, 2), seed_streams(3, 2)
    assert a == b and a[0] != a[1] and seed_streams(4, 2) != a
    assert all(0 <= s < 2 ** 63 for s in a)


# ------------------------------------------------------------------ the optimiser's implementation
def _steps(kind, impl, n=20, **kw):
    """``n`` steps of a small least-squares problem; the loss history and the final weights."""
    from pipeline.torchkit import make_optimizer

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 10, generator=g), torch.randn(64, 3, generator=g)
    w1 = torch.nn.Parameter(torch.randn(10, 8, generator=g) * 0.3)
    w2 = torch.nn.Parameter(torch.randn(8, 3, generator=g) * 0.3)
    opt = make_optimizer(kind, [{"params": [w1], "lr": 0.01}, {"params": [w2], "lr": 0.02}], impl,
                         lr=0.01, weight_decay=5e-4, **kw)
    losses = []
    for _ in range(n):
        opt.zero_grad()
        loss = ((torch.relu(x @ w1) @ w2 - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return opt, losses, torch.cat([w1.detach().flatten(), w2.detach().flatten()])


@pytest.mark.parametrize("kind, kw", [("adam", {}), ("sgd", {"momentum": 0.9})])
def test_optimizer_impls_agree_within_rounding(kind, kw):
    """fused / foreach / the per-tensor loop: the same update up to float32 rounding (20 steps,
    relative difference of losses and weights < 1e-5; the same ops in another order, not bitwise)."""
    from pipeline.torchkit import optimizer_impl

    opt, ref_losses, ref_w = _steps(kind, "loop", **kw)
    assert optimizer_impl(opt) == "loop"
    for impl in ("auto", "fused", "foreach"):
        opt, losses, w = _steps(kind, impl, **kw)
        assert optimizer_impl(opt) == ("fused" if impl == "auto" else impl)  # CPU fused: torch >= 2.4
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        assert float((w - ref_w).norm() / ref_w.norm()) < 1e-5
    assert ref_losses[-1] < ref_losses[0]  # it does optimise


def test_make_optimizer_bad_names():
    from pipeline.torchkit import make_optimizer

    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(PipelineError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", [{"params": p}])
    with pytest.raises(PipelineError, match="implementation 'fast'"):
        make_optimizer("adam", [{"params": p}], "fast")


def test_make_optimizer_auto_falls_back_to_foreach(monkeypatch):
    """Where torch has no fused kernel (older torch, some devices), auto runs foreach; fused asked for says so."""
    from pipeline import torchkit

    real = torch.optim.Adam

    def no_fused(params, fused=None, **kw):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert torchkit.optimizer_impl(torchkit.make_optimizer("adam", [{"params": p}], "auto", lr=0.1)) == "foreach"
    with pytest.raises(PipelineError, match="optimizer_impl fused: not available"):
        torchkit.make_optimizer("adam", [{"params": p}], "fused", lr=0.1)


def _mixed_modes() -> torch.nn.Module:
    """A top module in eval mode with one child (a dropout) left training: mixed modes."""
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    m.eval()
    m[1].train()
    return m


def test_evaluating_sets_eval_and_restores_each_submodules_own_mode():
    m = _mixed_modes()
    before = [sub.training for sub in m.modules()]
    assert before == [False, False, True, False, False]
    x = torch.ones(3, 4)
    with evaluating(m):
        assert not any(sub.training for sub in m.modules())
        a, b = m(x), m(x)
        assert torch.equal(a, b)  # no dropout inside
    assert [sub.training for sub in m.modules()] == before  # the dropout trains again, the rest as they were
    m.train()
    with evaluating(m):
        assert not any(sub.training for sub in m.modules())
    assert all(sub.training for sub in m.modules())


def test_evaluating_leaves_a_module_in_eval_mode_untouched(monkeypatch):
    """A served model is in eval mode: no walk over its submodules setting flags (what made
    hashing a batch of 4 texts 1.8 ms), and nothing a concurrent thread could see change."""
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()

    def refuse(self, mode=True):
        raise AssertionError("Module.train called on a module already in eval mode")

    monkeypatch.setattr(torch.nn.Module, "train", refuse)
    with evaluating(m):
        m(torch.ones(1, 4))
    assert not m.training


def test_evaluating_restores_modes_after_an_error():
    m = _mixed_modes()
    with pytest.raises(RuntimeError):
        with evaluating(m):
            raise RuntimeError("boom")
    assert m[1].training and not m.training
