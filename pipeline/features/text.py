"""Text features (the paper's section IV-A): captions through a text extractor of
:mod:`pipeline.features.extractors` (a ``transformers`` sentence encoder, CLIP's text tower, a bag
of words) or tag vectors, resumable.

Speed and scale: texts are encoded in batches padded to their own longest member, in order
of decreasing length inside each chunk (similar lengths share a batch, so little padding; the
longest batch comes first, so running out of memory shows at once), and written back in input
order. Large sets (MS-COCO) go through :func:`encode_sentences_h5`, resumable like the image
features: chunks are committed to a hidden work file and a killed run carries on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.features.extractors.sentence import (OFFLINE_PACKAGES, POOLINGS, TextEncoder,  # noqa: F401
                                                   embed_batch, load_text_encoder, resolve_model_dir)
from pipeline.features.extractors.tags import tag_vectors  # noqa: F401

log = logging.getLogger(__name__)


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


def encode_sentences(enc, texts: Sequence[str], batch_size: int = 128,
                     progress: bool = True, ids: Sequence[str] | None = None) -> np.ndarray:
    """Embeddings (n x dim, float32) of ``texts`` by the text extractor ``enc`` (its ``encode``
    of one batch), in input order; an empty text names its item.

    Batches are formed in :func:`length_order`; row i of the result is always ``texts[i]``.
    """
    from tqdm import tqdm

    check_texts(texts, ids)
    order = length_order(texts)
    out = np.zeros((len(texts), enc.dim), dtype=np.float32)
    with torch.inference_mode():
        for s in tqdm(range(0, len(texts), batch_size), desc="text", unit="batch", disable=not progress):
            rows = order[s:s + batch_size]
            out[rows] = enc.encode([texts[i] for i in rows])
    return out


def encode_sentences_h5(enc, texts: Sequence[str], out_h5: Path, *, ids: Sequence[str],
                        batch_size: int = 128, chunk_batches: int = 8, progress: bool = True,
                        attrs: dict | None = None, on_chunk: Callable[[int], None] | None = None) -> None:
    """Embeddings into ``out_h5`` (dataset ``text``), resumable chunk by chunk.

    A chunk is ``batch_size * chunk_batches`` consecutive texts, sorted by length inside the chunk
    and written back in input order; after each chunk the work file records the complete rows
    (:class:`pipeline.features.work.WorkFile`). The fingerprint covers the ids, the texts and the
    extractor (model, weights, pooling, maximum length), so a rerun with other captions or another
    model restarts.
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
    fp = fingerprint({**enc.fingerprint(), "n": n, "ids": digest(ids), "texts": digest(texts)})
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
