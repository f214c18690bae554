"""The torch helpers every torch-using part shares: the device, deterministic kernels, seed
streams, progress bars and batched inference.

Imported lazily by whoever needs torch, so that light stages (evaluate, report) never pay for it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.errors import PipelineError


def resolve_device(name: Any):
    """``auto`` -> cuda if available else cpu; ``cpu``; ``cuda``/``cuda:N`` (must exist); a
    ``torch.device`` as it is."""
    import torch

    if isinstance(name, torch.device):
        return name
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
def deterministic() -> Iterator[None]:
    """Deterministic kernels for the duration of a fit; the global flag is restored after."""
    import torch

    prev, prev_warn = (torch.are_deterministic_algorithms_enabled(),
                       torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def seed_streams(seed: int, n: int) -> tuple[int, ...]:
    """``n`` independent 63-bit seeds from one seed (initialisation, noise, batch order, ...)."""
    s = np.random.SeedSequence(int(seed)).generate_state(n, dtype=np.uint64)
    return tuple(int(v) & ((1 << 63) - 1) for v in s)


def progress(total: int, desc: str, enabled: bool, unit: str = "epoch"):
    """A tqdm bar (``tqdm.auto``), transient, off when ``enabled`` is false."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def evaluating(module) -> Iterator[Any]:
    """``module`` in eval mode for the block; every submodule that was training is training again
    after it (each one's own mode, not the top module's copied down).

    Why not ``was = m.training; m.eval(); ...; m.train(was)``: ``eval()`` and ``train()`` walk every
    submodule in Python, holding the GIL: hashing a served batch of 4 texts with CMIMH took 1.77 ms
    with them and takes 1.32 ms without (median, one thread); and a service's encoder threads,
    toggling one shared model, could set each other's modes mid-batch. A model already in eval mode
    (a loaded or served one) is not touched at all."""
    training = [m for m in module.modules() if m.training]
    if training:
        module.eval()
    try:
        yield module
    finally:
        for m in training:
            m.training = True


def batched(fn: Callable, x: np.ndarray, device: Any, batch_size: int = 4096) -> np.ndarray:
    """``fn`` (tensor -> tensor) over the rows of ``x`` in batches on ``device``, without gradients,
    as one float32 numpy array on the CPU."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device=device, dtype=torch.float32)
            out.append(fn(xb).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


#: How an optimiser's update runs: ``auto`` (fused kernels where torch has them for the parameters'
#: device, else foreach), ``fused``, ``foreach`` (one multi-tensor update per group), ``loop`` (one
#: update per parameter tensor: torch's CPU default, what models before issue 16 were trained with).
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "loop")


def make_optimizer(kind: str, groups: list[dict], impl: str = "auto", **kw):
    """``torch.optim.Adam`` or ``SGD`` over ``groups`` with the update implementation ``impl``.

    Why: on a CPU torch's default Adam updates one tensor at a time, 28-33 ms a step on CMIMH's
    networks against 7-10 ms fused (issue 16: 12-20% of a training step). The three compute the
    same update up to float rounding (tests/test_torchkit.py bounds the difference), so ``auto``
    takes the fastest one this torch offers and falls back quietly: fused, then foreach.
    """
    import torch

    cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}.get(kind)
    if cls is None:
        raise PipelineError(f"unknown optimizer {kind!r} (use adam or sgd)")
    if impl not in OPTIMIZER_IMPLS:
        raise PipelineError(f"unknown optimizer implementation {impl!r} (use {', '.join(OPTIMIZER_IMPLS)})")
    if impl == "loop":
        return cls(groups, foreach=False, **kw)
    if impl == "foreach":
        return cls(groups, foreach=True, **kw)
    try:
        return cls(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError) as e:  # this torch, device or dtype has no fused kernel
        if impl == "fused":
            raise PipelineError(f"optimizer_impl fused: not available here ({str(e).splitlines()[0][:120]}); "
                                "use auto or foreach") from None
        return cls(groups, foreach=True, **kw)


def optimizer_impl(opt) -> str:
    """Which implementation ``opt`` (a torch optimiser) runs: fused, foreach or loop (recorded in the history)."""
    d = opt.defaults
    return "fused" if d.get("fused") else ("foreach" if d.get("foreach") else "loop")
