"""ResNet-50, globally average-pooled (2,048-d: the input of its classifier); torchvision's
IMAGENET1K_V2 weights and their preprocessing (resize 232/224, centre crop)."""

from __future__ import annotations

from torch import nn

from pipeline.features.extractors.base import ImageExtractor, imagenet_transform, torchvision_network

NAME = "resnet50"
DIM = 2048
DEFAULT_SIZE = 224


def build(weights: str, seed: int, input_size: int | None) -> ImageExtractor:
    import torchvision

    size = int(input_size or DEFAULT_SIZE)
    model, resolved = torchvision_network(torchvision.models.resnet50,
                                          torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
                                          weights, seed, "ResNet-50", head="fc.")
    model.fc = nn.Identity()  # forward: ... layer4, avgpool, flatten -> (b, 2048)
    return ImageExtractor(NAME, model, imagenet_transform(size, 232, 224), DIM, resolved, size)
