"""ViT-B/16, its class token after the final layer norm (768-d: the input of its classifier);
torchvision's IMAGENET1K_V1 weights and their preprocessing (resize 256/224, centre crop, 224 px).

The input size is 224 with ImageNet weights (their position embeddings are for 14 x 14 patches);
random weights take any multiple of 16 (the tests use 64 px: 16 patches)."""

from __future__ import annotations

from torch import nn

from pipeline.errors import PipelineError
from pipeline.features.extractors.base import ImageExtractor, imagenet_transform, torchvision_network

NAME = "vit_b_16"
DIM = 768
DEFAULT_SIZE = 224
PATCH = 16


def build(weights: str, seed: int, input_size: int | None) -> ImageExtractor:
    import torchvision

    size = int(input_size or DEFAULT_SIZE)
    if size % PATCH:
        raise PipelineError(f"image_features.input_size: vit_b_16 needs a multiple of {PATCH}, got {size}")
    if weights == "imagenet" and size != DEFAULT_SIZE:
        raise PipelineError(f"image_features.input_size: vit_b_16's ImageNet weights need {DEFAULT_SIZE}, got {size}")
    model, resolved = torchvision_network(torchvision.models.vit_b_16, torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1,
                                          weights, seed, "ViT-B/16", head="heads.",
                                          **({} if weights == "imagenet" else {"image_size": size}))
    model.heads = nn.Identity()  # forward: ... encoder, class token -> (b, 768)
    return ImageExtractor(NAME, model, imagenet_transform(size, 256, 224), DIM, resolved, size)
