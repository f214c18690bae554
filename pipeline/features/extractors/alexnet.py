"""AlexNet FC7 (the paper's section IV-A): the 4,096-d output of the second fully connected layer,
after its ReLU, of torchvision's AlexNet; ImageNet preprocessing (resize 256/224, centre crop)."""

from __future__ import annotations

from torch import nn

from pipeline.features.extractors.base import ImageExtractor, ResolvedWeights, imagenet_transform, torchvision_network

NAME = "alexnet"
DIM = 4096
DEFAULT_SIZE = 224


def network(weights: str, seed: int) -> tuple[nn.Module, ResolvedWeights]:
    """AlexNet truncated after FC7's ReLU, in eval mode, with the weights resolved."""
    import torchvision

    model, resolved = torchvision_network(torchvision.models.alexnet, torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
                                          weights, seed, "AlexNet", head="classifier.6.")
    head = list(model.classifier.children())[:6]  # Dropout, FC6, ReLU, Dropout, FC7, ReLU
    return nn.Sequential(model.features, model.avgpool, nn.Flatten(1), *head).eval(), resolved


def build(weights: str, seed: int, input_size: int | None) -> ImageExtractor:
    size = int(input_size or DEFAULT_SIZE)
    net, resolved = network(weights, seed)
    return ImageExtractor(NAME, net, imagenet_transform(size, 256, 224), DIM, resolved, size)
