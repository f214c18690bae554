"""CLIP image and text towers through ``open_clip`` (``model: clip:ViT-B-32`` and the like).

``clip:ARCH``: any model name of ``open_clip.list_models()`` (``ViT-B-32``, ``ViT-L-14``,
``RN50``, ...), or ``clip:/path/to/Config.json``, an open_clip model config of your own (the tests
use a tiny one). ``weights``: ``random`` (seeded, for tests and offline demos), an open_clip
pretrained tag of that architecture (``openai``, ``laion2b_s34b_b79k``, ...: taken from the
Hugging Face cache, downloaded there only when it lacks the file and a network is there: the tag
is your explicit choice), or a checkpoint path. The features are the L2-normalised embeddings of
the joint space (CLIP's own similarity is their dot product), ``embed_dim``-d; the image
preprocessing is open_clip's for those weights (resize, centre crop, CLIP's mean and std), and the
text tokeniser its BPE tokeniser (shipped with open_clip: no download). The image tower and the
text tower of one CLIP share the joint space: use the same model and weights on both sides.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.features.extractors.base import (ImageExtractor, ResolvedWeights, TextExtractor, first_line, seeded)
from pipeline.io import sha256_file

PREFIX = "clip:"


def arch_of(model: str) -> str:
    """The open_clip architecture named by ``clip:ARCH`` (a config file is registered first)."""
    import open_clip

    arch = model[len(PREFIX):] if model.startswith(PREFIX) else model
    if arch.endswith(".json"):
        path = Path(arch)
        if not path.is_file():
            raise PipelineError(f"CLIP model config not found: {path}")
        open_clip.add_model_config(path)
        return path.stem
    if arch not in open_clip.list_models():
        raise PipelineError(f"unknown CLIP architecture {arch!r} (open_clip.list_models() lists them, e.g. ViT-B-32, "
                            "ViT-L-14, RN50; or give clip:/path/to/config.json)")
    return arch


@contextlib.contextmanager
def _quiet():
    """open_clip warns on the root logger when it initialises randomly: that is what was asked for."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def load(model: str, weights: str, seed: int, what: str = "image_features"):
    """(open_clip model in eval mode, its evaluation preprocessing, ResolvedWeights)."""
    import open_clip

    arch = arch_of(model)
    try:
        if weights == "random":
            with seeded(seed), _quiet():
                net, _, pre = open_clip.create_model_and_transforms(arch, pretrained=None)
            resolved = ResolvedWeights("random", f"seed={seed}", None)
        elif Path(weights).is_file():
            net, _, pre = open_clip.create_model_and_transforms(arch, pretrained=str(weights))
            resolved = ResolvedWeights("checkpoint", str(Path(weights).resolve()), sha256_file(weights))
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if weights not in tags:
                raise PipelineError(f"{what}.weights: {weights!r} is neither a file nor a pretrained tag of {arch} "
                                    f"({', '.join(tags) or 'none known'}; or random)")
            try:
                path = open_clip.download_pretrained(open_clip.get_pretrained_cfg(arch, weights))
            except Exception as e:  # noqa: BLE001 - offline, no cache: one line
                raise PipelineError(f"CLIP weights {arch}/{weights} unavailable ({type(e).__name__}: {first_line(e)}); "
                                    f"fetch them once where there is a network, or set {what}.weights to a "
                                    "checkpoint path") from None
            net, _, pre = open_clip.create_model_and_transforms(arch, pretrained=weights)
            resolved = ResolvedWeights(weights, str(path), sha256_file(path) if Path(path).is_file() else None)
    except PipelineError:
        raise
    except Exception as e:  # noqa: BLE001 - a checkpoint of another architecture, ...
        raise PipelineError(f"cannot load CLIP {arch} with weights {weights}: {type(e).__name__}: {first_line(e)}") from None
    return net.eval(), pre, resolved


class _ImageTower(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, x):
        return torch.nn.functional.normalize(self.clip.encode_image(x), dim=-1)


def native_size(net) -> int:
    size = net.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def build_image(model: str, weights: str, seed: int, input_size: int | None) -> ImageExtractor:
    net, pre, resolved = load(model, weights, seed)
    size = native_size(net)
    if input_size is not None and int(input_size) != size:
        raise PipelineError(f"image_features.input_size: {model} takes {size}-pixel images, not {input_size} "
                            "(leave input_size null for the model's own)")
    dim = int(net.text_projection.shape[1]) if getattr(net, "text_projection", None) is not None else None
    tower = _ImageTower(net)
    if dim is None:
        with torch.no_grad():
            dim = int(tower(torch.zeros(1, 3, size, size)).shape[1])
    return ImageExtractor(model, tower, pre, dim, resolved, size)


class ClipText(TextExtractor):
    """The text tower: BPE tokens (open_clip's tokeniser, its context length) -> normalised embedding."""

    inputs = "captions"

    def __init__(self, model: str, weights: str, seed: int):
        import open_clip

        self.net, _, self.weights = load(model, weights, seed, what="text_features")
        self.tokenizer = open_clip.get_tokenizer(arch_of(model))
        self.name = model
        with torch.no_grad():
            self.dim = int(self.net.encode_text(self.tokenizer(["a"])).shape[1])
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def encode(self, batch: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(batch)).to(self.device)
        with torch.inference_mode():
            return torch.nn.functional.normalize(self.net.encode_text(tokens), dim=-1).float().cpu().numpy()

    def fingerprint(self) -> dict:
        return {"features": self.name, "weights": [self.weights.name, self.weights.source, self.weights.sha256],
                "dim": self.dim}
