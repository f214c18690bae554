"""The feature extractor interface, shared by every extractor module of this package.

An image extractor (:class:`ImageExtractor`) has a ``name``, a ``dim``, the ``weights`` that made
it (:class:`ResolvedWeights`, recorded with the features), ``preprocess`` (one RGB PIL image ->
a CHW tensor; run in the DataLoader's workers) and ``encode`` (a batch of preprocessed tensors ->
an ``(b, dim)`` float32 array). A text extractor (:class:`TextExtractor`) has a ``name``, a ``dim``,
``inputs`` (what it reads from a pair: ``"captions"`` or ``"tags"``), ``encode`` (a batch of
captions or tag lists -> ``(b, dim)`` float32) and ``query`` (typed query strings -> the same
rows, for the search index). Extraction (:mod:`pipeline.features.image`, :mod:`pipeline.features.text`)
and the search index use the same objects, so a query is encoded exactly as the database was.

Weights are never fetched behind the user's back: each extractor resolves ``weights`` explicitly
(a pretrained name, a local checkpoint, or ``random``: a seeded initialisation of the real
architecture, for tests and offline demos), and :class:`ResolvedWeights` records which (with the
checkpoint's SHA-256).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.io import sha256_file

#: ``image_features.precision``: the network's arithmetic during extraction.
PRECISIONS = ("fp32", "bf16")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ResolvedWeights:
    """Which weights produced the features: recorded in the HDF5 attributes."""

    name: str          # "imagenet", "random", "checkpoint" or a pretrained tag ("openai", ...)
    source: str        # torchvision weights enum, checkpoint path, pretrained file, or "seed=N"
    sha256: str | None


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random initialisation from ``seed``, leaving the global CPU generator as it was."""
    state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


class ImageExtractor:
    """A network from image to vector: ``preprocess`` (PIL -> tensor) then ``encode`` (batch -> array)."""

    def __init__(self, name: str, net: nn.Module, transform: Callable, dim: int, weights: ResolvedWeights,
                 input_size: int | None):
        self.name, self.net, self.transform, self.dim = name, net.eval(), transform, int(dim)
        self.weights, self.input_size = weights, input_size
        self.device = torch.device("cpu")
        self.precision, self.channels_last = "fp32", False

    def preprocess(self, image) -> torch.Tensor:
        """One RGB PIL image -> the network's input tensor (C, H, W)."""
        return self.transform(image)

    def to(self, device: torch.device) -> "ImageExtractor":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def set_arithmetic(self, precision: str = "fp32", channels_last: bool = False) -> "ImageExtractor":
        """fp32 or bf16 autocast, and channels-last convolutions (``image_features.precision``,
        ``channels_last``): why, the speed (issue 16); fp32 contiguous is the paper's arithmetic."""
        if precision not in PRECISIONS:
            raise PipelineError(f"image_features.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.precision, self.channels_last = precision, bool(channels_last)
        self.net.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return self

    def encode(self, x: torch.Tensor) -> np.ndarray:
        """A batch (b, C, H, W) of preprocessed images -> (b, dim) float32 on the CPU."""
        x = x.to(self.device, non_blocking=self.device.type == "cuda")
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            out = self.net(x)
        return out.float().cpu().numpy()

    def fingerprint(self) -> dict:
        """What decides the rows, for a resumable work file (the weights as resolved, the precision)."""
        fp = {"features": self.name, "weights": [self.weights.name, self.weights.source, self.weights.sha256],
              "input_size": self.input_size, "dim": self.dim}
        if self.precision != "fp32":  # a resumed bf16 run never mixes with fp32 rows; fp32 work files as before
            fp["precision"] = self.precision
        return fp


class TextExtractor:
    """Captions or tag lists -> vectors; ``query`` encodes typed query strings the same way."""

    # Each extractor sets ``name`` and ``dim`` (not declared here, so that a dataclass subclass
    # declares them as its own fields).
    inputs = "captions"  # or "tags"

    def encode(self, batch: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    def query(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(list(texts))

    def prepare_queries(self) -> None:
        """Make now what :meth:`query` needs beyond :meth:`encode` (nothing here; a sentence
        encoder traces its model), so that the search index's loading pays for it, not a query."""

    def to(self, device: torch.device) -> "TextExtractor":
        return self

    def fingerprint(self) -> dict:
        return {"features": self.name, "dim": self.dim}  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- torchvision networks
def imagenet_transform(input_size: int = 224, resize: int = 256, crop: int = 224):
    """torchvision's ImageNet evaluation preprocessing: resize the shorter side to
    ``input_size * resize / crop`` (256/224 for AlexNet), centre crop ``input_size``, normalise."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(int(round(input_size * resize / crop))),
        transforms.CenterCrop(input_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _state_dict(obj: Any) -> dict:
    """The tensors of a checkpoint: a state dict, or one under ``state_dict``/``model``; a
    DataParallel ``module.`` prefix removed."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ValueError("not a state dict")
    if all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def torchvision_network(builder: Callable, enum: Any, weights: str, seed: int, title: str,
                        head: str, **build) -> tuple[nn.Module, ResolvedWeights]:
    """A torchvision classification network with ``weights`` resolved explicitly.

    ``imagenet``: torchvision's checkpoint ``enum`` (from the torch hub cache; downloaded only
    when the cache lacks it and a network is there); ``random``: seeded; a path: a local
    checkpoint (a state dict). The classifier head (parameters starting with ``head``) is not
    used for features, so a checkpoint fine-tuned with another number of classes loads too.
    """
    if weights == "random":
        with seeded(seed):
            model = builder(weights=None, **build)
        return model, ResolvedWeights("random", f"seed={seed}", None)
    if weights == "imagenet":
        file = Path(enum.url).name
        ckpt = Path(torch.hub.get_dir()) / "checkpoints" / file
        try:
            model = builder(weights=enum, **build)
        except Exception as e:  # noqa: BLE001 - network or cache failure: say where the file must go
            raise PipelineError(
                f"ImageNet {title} weights unavailable ({type(e).__name__}); place {file} at {ckpt} "
                "or set image_features.weights to a checkpoint path") from None
        return model, ResolvedWeights("imagenet", str(enum), sha256_file(ckpt) if ckpt.is_file() else None)
    path = Path(weights)
    if not path.is_file():
        raise PipelineError(f"image_features.weights: no such checkpoint {path} "
                            "(use 'imagenet', 'random' or a file path)")
    try:
        state = _state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model = builder(weights=None, **build)
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(head)]
        if missing or unexpected:
            raise ValueError(f"missing keys {missing[:3]}" if missing else f"unexpected keys {unexpected[:3]}")
    except Exception as e:  # noqa: BLE001 - any failure to read or match the checkpoint
        raise PipelineError(f"cannot load {title} checkpoint {path}: {type(e).__name__}: {first_line(e)}") from None
    return model, ResolvedWeights("checkpoint", str(path.resolve()), sha256_file(path))
