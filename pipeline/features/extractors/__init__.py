"""The feature extractors, one small module each behind one interface (:mod:`.base`):

==================  =====================  ==========================================================
config              module                 features
==================  =====================  ==========================================================
``alexnet``         :mod:`.alexnet`        FC7 after its ReLU, 4,096-d (the paper)
``vgg19``           :mod:`.vgg19`          FC7 after its ReLU, 4,096-d (the paper's Tables VI, VII)
``resnet50``        :mod:`.resnet50`       global average pool, 2,048-d
``vit_b_16``        :mod:`.vit_b_16`       class token, 768-d
``clip:ARCH``       :mod:`.clip`           CLIP's image tower (open_clip), its embedding size
text ``sentence``   :mod:`.sentence`       a transformers encoder, mean or [CLS] pooling
text ``clip``       :mod:`.clip`           CLIP's text tower
text ``tags``       :mod:`.tags`           0/1 vector over the tag vocabulary
text ``bow``        :mod:`.bow`            0/1 bag of words over a vocabulary of the training captions
==================  =====================  ==========================================================

:func:`image_extractor` and :func:`text_extractor` build one from its settings record (what
``ImageFeatures.record`` / ``TextFeatures.record`` give, and what ``image.h5``, ``text.h5``,
``features.h5`` and the search index's ``index.json`` store), so extraction and the search index
build the same object from the same record.
"""

from __future__ import annotations

import importlib
from typing import Sequence

from pipeline.errors import PipelineError
from pipeline.features.extractors.base import ImageExtractor, ResolvedWeights, TextExtractor
from pipeline.features.settings import IMAGE_MODELS

__all__ = ["ImageExtractor", "TextExtractor", "ResolvedWeights", "image_extractor", "text_extractor"]


def image_extractor(record: dict, device=None, channels_last: bool | None = None) -> ImageExtractor:
    """The image extractor of a record ``{"model", "weights", "input_size", "seed"?, "precision"?}``
    (precision fp32 when absent); ``channels_last``: None = with bf16 only (ImageFeatures.use_channels_last)."""
    model, weights = str(record["model"]), str(record["weights"])
    seed, size = int(record.get("seed", 0)), record.get("input_size")
    if model.startswith("clip:"):
        from pipeline.features.extractors import clip

        ex = clip.build_image(model, weights, seed, size)
    elif model in IMAGE_MODELS:
        ex = importlib.import_module(f"pipeline.features.extractors.{model}").build(weights, seed, size)
    else:
        raise PipelineError(f"unknown image model {model!r} (known: {', '.join(IMAGE_MODELS)}, clip:ARCH)")
    precision = str(record.get("precision", "fp32"))
    ex.set_arithmetic(precision, precision == "bf16" if channels_last is None else channels_last)
    return ex.to(device) if device is not None else ex


def text_extractor(record: dict, vocab: Sequence[str] | None = None, device=None) -> TextExtractor:
    """The text extractor of a record (``TextFeatures.record``); ``vocab``: the tag or
    bag-of-words vocabulary (kinds ``tags`` and ``bow``)."""
    import torch

    kind = record["kind"]
    device = torch.device("cpu") if device is None else device
    if kind == "sentence":
        from pipeline.features.extractors.sentence import load_text_encoder

        return load_text_encoder(record["model"], device, record.get("pooling", "mean"),
                                 int(record.get("max_length", 64)), str(record.get("precision", "fp32")))
    if kind == "clip":
        from pipeline.features.extractors.clip import ClipText

        return ClipText(record["model"], str(record["weights"]), int(record.get("seed", 0))).to(device)
    if kind == "tags":
        from pipeline.features.extractors.tags import TagVectors

        return TagVectors(vocab)
    if kind == "bow":
        from pipeline.features.extractors.bow import BagOfWords

        return BagOfWords(vocab, record.get("stop_words", "english"))
    raise PipelineError(f"unknown text features kind {kind!r}")
