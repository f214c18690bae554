"""VGG-19 FC7 (the paper's Tables VI and VII): the 4,096-d output of the second fully connected
layer, after its ReLU, of torchvision's VGG-19; ImageNet preprocessing (resize 256/224, centre crop)."""

from __future__ import annotations

from torch import nn

from pipeline.features.extractors.base import ImageExtractor, imagenet_transform, torchvision_network

NAME = "vgg19"
DIM = 4096
DEFAULT_SIZE = 224


def build(weights: str, seed: int, input_size: int | None) -> ImageExtractor:
    import torchvision

    size = int(input_size or DEFAULT_SIZE)
    model, resolved = torchvision_network(torchvision.models.vgg19, torchvision.models.VGG19_Weights.IMAGENET1K_V1,
                                          weights, seed, "VGG-19", head="classifier.6.")
    head = list(model.classifier.children())[:5]  # FC6, ReLU, Dropout, FC7, ReLU
    net = nn.Sequential(model.features, model.avgpool, nn.Flatten(1), *head)
    return ImageExtractor(NAME, net, imagenet_transform(size, 256, 224), DIM, resolved, size)
