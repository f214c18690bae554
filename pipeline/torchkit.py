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
