"""The shared torch helpers (pipeline/torchkit.py)."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.torchkit import resolve_device, seed_streams


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
