"""A searchable index per data set, method and code length (``results/.../{bits}/index/``).

The folder holds ``index.h5`` (packed database codes of both modalities, item ids, labels, the
image PCA, the tag vocabulary, and what a hit needs to be shown: each item's caption and image path,
relative to the prepared data set's folder), ``model.pt`` (the trained encoders) and ``index.json``
(format, code length, the data set's folder (``media``), and which feature extractors made the
features: taken from the features file's provenance, never from the config, so a query is encoded
exactly as the database was). Features imported from elsewhere have unknown extractors: such an
index answers no raw text or image query, and says so in one line; it has no captions or images
either. Ranking is by Hamming distance, ties by database index, as in evaluation.

Loading reads the codes once, memory-mapped from ``index.h5`` when stored contiguously (the
default), and prepares them for ranking once (:class:`pipeline.eval.hamming.Database`), so a
service answers each query with one pass over the codes and no copy.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.errors import PipelineError
from pipeline.eval.codes import pack_bits
from pipeline.eval.hamming import Database
from pipeline.io import (atomic_directory, h5_file, open_h5, read_arrays, read_strings, sha256_file, to_jsonable, write_arrays,
                         write_strings)

log = logging.getLogger(__name__)

INDEX_FORMAT = "cmimh-index/2"
#: Most texts (or images) in one batch query; longest text query, characters.
MAX_BATCH = 1000
MAX_TEXT_CHARS = 2000


def recorded_extractors(features) -> dict:
    """``{"image": ..., "text": ...}``: the extractors that made ``features``, from its provenance.

    image: the image extractor's settings (model, weights, input size, seed for random weights)
    and the checkpoint's sha256, usable only with the stored PCA; text: the text extractor's
    (sentence encoder, CLIP text tower, or tag vectors / bag of words with the stored vocabulary).
    Each is the record :func:`pipeline.features.extractors.image_extractor` / ``text_extractor``
    rebuild the extractor from. None where unknown: an imported file, or one written before
    extractors were recorded.
    """
    from pipeline.features.store import provenance_of

    prov = provenance_of(features.attrs)
    out: dict[str, Any] = {"image": None, "text": None, "features_stage": prov.get("stage", "unknown")}
    if prov.get("stage") != "extract":
        return out
    img, txt = prov.get("image") or {}, prov.get("text") or {}
    recorded = img.get("image_settings") or img.get("fc7_settings")  # fc7_settings: files of older versions
    if recorded and features.pca is not None:
        out["image"] = {**json.loads(recorded), "weights_sha256": img.get("weights_sha256") or None}
    if txt.get("text_settings"):
        t = json.loads(txt["text_settings"])
        if t.get("kind") not in ("tags", "bow") or features.tag_vocab is not None:
            out["text"] = t
    return out


def _media(features, db_rows: np.ndarray, manifest) -> tuple[dict | None, list[str] | None, list[str] | None]:
    """(``index.json``'s media record, captions, image paths) of the database rows, from the prepared
    data set's manifest, which must be the one the features were made from (its checksum is in
    their provenance); (None, None, None) without a manifest."""
    if manifest is None:
        return None, None, None
    from pipeline.data.manifest import read_manifest
    from pipeline.features.store import provenance_of

    manifest = Path(manifest)
    want = provenance_of(features.attrs).get("manifest_sha256")
    if want and sha256_file(manifest) != want:
        raise PipelineError(f"{manifest}: not the manifest the features were made from (its sha256 differs from "
                            "the features' provenance); rerun extraction or give the right --manifest")
    m = read_manifest(manifest)
    by_id = {p.id: p for p in m.pairs}
    ids = [str(i) for i in features.ids[db_rows]]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise PipelineError(f"{manifest}: {len(missing)} database ids are not in the manifest (first: {missing[0]})")
    media = {"root": str(m.root.resolve()), "manifest_sha256": sha256_file(manifest)}
    return media, [by_id[i].caption for i in ids], [by_id[i].image for i in ids]


def build_index(index_dir: Path, *, model_path: Path, features, db_rows: np.ndarray, db_image: np.ndarray,
                db_text: np.ndarray, settings: dict, manifest: Path | None = None) -> None:
    """Write the index folder atomically (a temporary folder renamed into place): the database
    rows ``db_rows`` of ``features`` with their codes, and, with the data set's ``manifest``, each
    item's caption and image path."""
    media, captions, images = _media(features, db_rows, manifest)
    with atomic_directory(index_dir) as tmp:
        db = db_rows
        with h5_file(tmp / "index.h5") as f:
            f.create_dataset("db_image", data=pack_bits(db_image))
            f.create_dataset("db_text", data=pack_bits(db_text))
            write_strings(f, "ids", features.ids[db])
            f.create_dataset("labels", data=features.labels[db])
            f.attrs["bits"] = int(db_image.shape[1])
            if features.tag_vocab is not None:
                write_strings(f, "tag_vocab", features.tag_vocab)
            if features.pca is not None:
                write_arrays(f, "image_pca", features.pca)
            if captions is not None:
                write_strings(f, "captions", captions)
                write_strings(f, "image_paths", images)
        shutil.copyfile(model_path, tmp / "model.pt")
        meta = {"format": INDEX_FORMAT, "bits": int(db_image.shape[1]), "dataset": settings.get("dataset"),
                "method": settings.get("method"), "extractors": recorded_extractors(features), "media": media}
        (tmp / "index.json").write_text(json.dumps(to_jsonable(meta), indent=2, sort_keys=True) + "\n")


@dataclass
class Index:
    """A loaded index."""

    path: Path
    bits: int
    db_image: np.ndarray
    db_text: np.ndarray
    ids: np.ndarray
    pca: dict | None
    tag_vocab: list[str] | None
    extractors: dict
    model: Any  # a fitted pipeline.methods.base.Hasher
    device: "torch.device"
    encoders: dict = field(default_factory=dict)  # query feature extractors, loaded once on first use
    captions: "Strings | list[str] | None" = None
    image_paths: "Strings | list[str] | None" = None  # relative to media_root
    media_root: Path | None = None
    meta: dict = field(default_factory=dict)
    ranking: dict = field(default_factory=dict)  # target -> Database, prepared once
    text_precision: str | None = None  # the text query encoder's arithmetic; None: as recorded (serve/search flag)

    def database(self, target: str) -> Database:
        """The ranking structure of the database codes of ``target`` ("image" or "text"), made once."""
        if target not in self.ranking:
            self.ranking[target] = Database(self.db_image if target == "image" else self.db_text)
        return self.ranking[target]

    def item_id(self, row: int) -> str:
        v = self.ids[row]
        return v.decode() if isinstance(v, bytes) else str(v)

    def image_file(self, row: int) -> Path | None:
        """The image file of database row ``row`` (None when the index records no images)."""
        if self.image_paths is None or self.media_root is None:
            return None
        return self.media_root / self.image_paths[row]

    def row_of(self, item_id: str) -> int | None:
        """Database row of an item id (None when unknown): a binary search in the ids sorted once
        (no dictionary of millions of strings)."""
        if "_order" not in self.ranking:
            self.ranking["_order"] = np.argsort(self.ids, kind="stable")
        order = self.ranking["_order"]
        key = np.array(item_id.encode() if self.ids.dtype.kind == "S" else item_id, dtype=self.ids.dtype)
        if self.ids.dtype.kind == "S" and len(item_id.encode()) > self.ids.dtype.itemsize:
            return None
        i = int(np.searchsorted(self.ids[order], key)) if len(order) else 0
        if i < len(order) and self.ids[order[i]] == key:
            return int(order[i])
        return None


#: A string column of at most this many rows is read into memory on first use: an HDF5 read of a
#: query's hits costs ~0.7 ms (16% of a served query's time on the demo index), a list lookup ~1 us;
#: 262,144 captions are ~25 MB. Longer columns stay on disk and are read per query.
STRINGS_IN_MEMORY = 1 << 18


class Strings:
    """A string column of ``index.h5`` read on demand (captions, image paths of millions of items
    stay on disk; a query reads its k hits' rows; a column of up to :data:`STRINGS_IN_MEMORY` rows
    is read once, on first use)."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self._f: h5py.File | None = None
        self._n: int | None = None
        self._all: list[str] | None = None
        self._lock = threading.Lock()  # a service's encoder workers may read at once

    def _ds(self):
        if self._f is None:
            self._f = h5py.File(self.path, "r")
        return self._f[self.key]

    def __len__(self) -> int:
        if self._n is None:
            self._n = int(self._ds().shape[0])
        return self._n

    def take(self, rows) -> list[str]:
        """The strings of ``rows`` (any order, repeats allowed), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return []
        with self._lock:
            if self._all is None and len(self) <= STRINGS_IN_MEMORY:
                self._all = [_text(v) for v in self._ds()[()]]
            if self._all is not None:
                return [self._all[i] for i in rows.tolist()]
            uniq, inv = np.unique(rows, return_inverse=True)
            vals = [_text(v) for v in self._ds()[uniq]]  # h5py reads increasing rows in one call
        return [vals[i] for i in inv]

    def __getitem__(self, row: int) -> str:
        return self.take([row])[0]

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ids(ds) -> np.ndarray:
    """Item ids as a fixed-width bytes array (UTF-8): 1 byte a character, ~9x less than a list of str."""
    raw = ds[()]
    if raw.dtype.kind == "O":
        raw = np.array([v if isinstance(v, bytes) else str(v).encode() for v in raw])
    elif raw.dtype.kind != "S":
        raw = np.array([str(v).encode() for v in raw])
    return raw.astype(f"S{max(1, raw.dtype.itemsize)}")


def _codes(f: h5py.File, path: Path, key: str) -> np.ndarray:
    """A dataset of packed codes, memory-mapped when stored contiguously and uncompressed (read
    once, shared with every query), else read into memory."""
    ds = f[key]
    offset = ds.id.get_offset()
    if ds.chunks is None and ds.compression is None and offset is not None and ds.dtype == np.uint8 and ds.size:
        return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=ds.shape)
    return ds[()]


def _read_index_json(path: Path) -> dict:
    try:
        meta = json.loads((path / "index.json").read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PipelineError(f"{path / 'index.json'}: damaged ({str(e).splitlines()[0][:120]}); "
                            "rerun the encode stage") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT or not isinstance(meta.get("extractors"), dict):
        raise PipelineError(f"{path / 'index.json'}: not a {INDEX_FORMAT} index (made by an older version?); "
                            "rerun the encode stage")
    return meta


def load_index(path: str | Path, device: torch.device | None = None, text_precision: str | None = None) -> Index:
    """Load an index folder; a missing, incomplete or damaged folder is one clear error.

    ``text_precision``: "fp32" or "bf16" for the text query encoder (None: as its record says)."""
    from pipeline.features.extractors.base import PRECISIONS
    from pipeline.methods.base import load_model

    if text_precision is not None and text_precision not in PRECISIONS:
        raise PipelineError(f"--text-precision must be {' or '.join(PRECISIONS)}, not {text_precision!r}")

    path = Path(path)
    if not path.is_dir():
        raise PipelineError(f"not an index folder: {path}")
    for name in ("index.h5", "model.pt", "index.json"):
        if not (path / name).is_file():
            raise PipelineError(f"not an index folder: {path} (missing {name})")
    meta = _read_index_json(path)
    import torch  # here, not at the top: `cmimh search --help` and the exact ranking need no torch

    device = device or torch.device("cpu")
    with open_h5(path / "index.h5", "index") as f:
        for key in ("db_image", "db_text", "ids"):
            if key not in f:
                raise PipelineError(f"{path / 'index.h5'}: missing dataset '{key}' (damaged index; rerun encode)")
        db_image, db_text = _codes(f, path / "index.h5", "db_image"), _codes(f, path / "index.h5", "db_text")
        ids = _ids(f["ids"])
        bits = int(f.attrs.get("bits", 8 * db_image.shape[1]))
        pca = read_arrays(f, "image_pca")
        vocab = read_strings(f, "tag_vocab")
        shown = "captions" in f and "image_paths" in f
        n_shown = (len(f["captions"]), len(f["image_paths"])) if shown else None
    captions = Strings(path / "index.h5", "captions") if shown else None
    images = Strings(path / "index.h5", "image_paths") if shown else None
    if not (len(ids) == len(db_image) == len(db_text)) or db_image.shape[1:] != db_text.shape[1:] or (
            shown and n_shown != (len(ids), len(ids))):
        raise PipelineError(f"{path / 'index.h5'}: codes and ids disagree in size (damaged index; rerun encode)")
    model, _ = load_model(path / "model.pt", device)
    media = meta.get("media") or {}
    root = Path(media["root"]) if media.get("root") else None
    return Index(path, bits, db_image, db_text, ids, pca, vocab, meta["extractors"], model, device,
                 captions=captions, image_paths=images, media_root=root, meta=meta, text_precision=text_precision)


def _extractor(index: Index, modality: str) -> dict:
    """The recorded extractor of ``modality``, or one line saying why raw queries cannot be encoded."""
    ex = index.extractors.get(modality)
    if ex is None:
        stage = index.extractors.get("features_stage")
        why = ("its features were imported from another project's files" if stage == "import"
               else "its features file does not record how they were made")
        raise PipelineError(f"index {index.path}: {why}, so the {modality} extractor that made them is unknown and a "
                            f"raw {modality} query cannot be encoded the same way (extract the features with "
                            "`cmimh extract` to search with raw queries)")
    return ex


def check_query_text(text: str, what: str = "--text") -> str:
    """A typed query: non-empty, valid UTF-8 (a shell can pass undecodable bytes), not too long;
    else one line."""
    if not isinstance(text, str):
        raise PipelineError(f"{what} must be a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PipelineError(f"{what} is not valid UTF-8 (check the terminal's encoding)") from None
    if not text.strip():
        raise PipelineError(f"empty {what} query")
    if len(text) > MAX_TEXT_CHARS:
        raise PipelineError(f"{what} is longer than {MAX_TEXT_CHARS} characters")
    return text


def text_query_features(index: Index, texts: list[str]) -> np.ndarray:
    """Text features exactly as extraction made them: the recorded text extractor's ``query``."""
    ex = _extractor(index, "text")
    if ex["kind"] in ("tags", "bow") and not index.tag_vocab:
        raise PipelineError(f"index {index.path} uses {'tag vectors' if ex['kind'] == 'tags' else 'a bag of words'} "
                            "but stores no vocabulary")
    load_query_encoder(index, "text")
    return index.encoders["text"].query(texts)


def image_query_features(index: Index, images: list) -> np.ndarray:
    """The recorded image extractor's features of the images, projected by the index's PCA.

    ``images``: paths, or raw file bytes (an upload)."""
    import io

    from pipeline.features.image import open_rgb
    from pipeline.features.pca import apply_pca

    load_query_encoder(index, "image")
    ex = index.encoders["image"]
    xs = []
    for p in images:
        upload = isinstance(p, (bytes, bytearray))
        name = "the uploaded image" if upload else str(p)
        if not upload and Path(p).is_dir():
            raise PipelineError(f"--image {p} is a directory, not an image file")
        try:
            xs.append(ex.preprocess(open_rgb(io.BytesIO(p) if upload else p)))  # as extraction decodes
        except FileNotFoundError:
            raise PipelineError(f"image not found: {p}") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many types (DecompressionBombError, struct errors)
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")[:200]
            raise PipelineError(f"unreadable image: {name} ({why})") from None
    import torch

    return apply_pca(ex.encode(torch.stack(xs)), index.pca)


BACKENDS = ("exact", "faiss", "faiss-hash")


def _check(k: int, backend: str, target: str | None) -> None:
    if not isinstance(k, int) or k < 1:
        raise PipelineError(f"-k must be >= 1, not {k}")
    if backend not in BACKENDS:
        raise PipelineError(f"unknown search backend {backend!r} (use exact, faiss or faiss-hash)")
    if target not in (None, "image", "text"):
        raise PipelineError(f"unknown target {target!r} (use image or text)")


def rank_codes(index: Index, codes01: np.ndarray, k: int, target: str, backend: str = "exact",
               n_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Top-k database rows of ``target`` for (n, bits) 0/1 query codes: (indices, distances), on
    ``n_threads`` threads (faiss: one query always on one, :func:`~pipeline.search.faiss_backend.search_threads`)."""
    q = pack_bits(codes01)
    if backend == "exact":
        return index.database(target).topk(q, k, n_threads=n_threads)
    from pipeline.search.faiss_backend import FaissBinaryIndex

    kind = "flat" if backend == "faiss" else "hash"
    key = f"faiss-{target}-{kind}"
    if key not in index.encoders:
        index.encoders[key] = FaissBinaryIndex(index.db_image if target == "image" else index.db_text, kind)
    return index.encoders[key].search(q, k, n_threads)


def hits(index: Index, idx: np.ndarray, dist: np.ndarray, target: str) -> list[dict]:
    """One query's ranked rows as ``[{rank, id, distance, target, caption, image}]`` (caption and
    image file path None where the index records none)."""
    keep = [(r, int(j), int(d)) for r, (j, d) in enumerate(zip(idx, dist)) if j >= 0]
    rows = [j for _, j, _ in keep]
    caps = _take(index.captions, rows)
    imgs = _take(index.image_paths, rows)
    root = index.media_root
    return [{"rank": r + 1, "id": index.item_id(j), "distance": d, "target": target,
             "caption": None if caps is None else caps[n],
             "image": None if imgs is None or root is None else str(root / imgs[n])}
            for n, (r, j, d) in enumerate(keep)]


def _take(col, rows: list[int]) -> list[str] | None:
    if col is None:
        return None
    return col.take(rows) if isinstance(col, Strings) else [col[j] for j in rows]


def search_batch(index: Index, *, texts: list[str] | None = None, images: list | None = None, k: int = 10,
                 target: str | None = None, backend: str = "exact", n_threads: int = 1) -> list[list[dict]]:
    """Top-k hits of each of many text (or image) queries, encoded in one batch and ranked together;
    the same hits as one :func:`search` per query."""
    _check(k, backend, target)
    if (texts is None) == (images is None):
        raise PipelineError("give texts or images")
    items = texts if texts is not None else images
    if not items:
        raise PipelineError("no queries")
    if len(items) > MAX_BATCH:
        raise PipelineError(f"{len(items)} queries in one batch (at most {MAX_BATCH})")
    if texts is not None:
        checked = [check_query_text(t, f"query {i + 1}" if len(texts) > 1 else "--text") for i, t in enumerate(texts)]
        codes = index.model.encode_text(text_query_features(index, checked))
        target = target or "image"
    else:
        codes = index.model.encode_image(image_query_features(index, list(images)))
        target = target or "text"
    idx, dist = rank_codes(index, codes, k, target, backend, n_threads)
    return [hits(index, idx[i], dist[i], target) for i in range(len(items))]


def search(index: Index, *, text: str | None = None, image: str | Path | bytes | None = None, k: int = 10,
           target: str | None = None, backend: str = "exact") -> list[dict]:
    """Top-k database items for one text or image query: ``[{rank, id, distance, target, caption, image}]``.

    ``backend``: "exact" (counting top-k), "faiss" (faiss-cpu exact flat index, same results) or
    "faiss-hash" (faiss-cpu hash index, approximate; may return fewer than k). The faiss index
    is built on first use and cached in ``index.encoders``.
    """
    if text is not None:
        return search_batch(index, texts=[text], k=k, target=target, backend=backend)[0]
    if image is not None:
        return search_batch(index, images=[image if isinstance(image, (bytes, bytearray)) else Path(image)], k=k,
                            target=target, backend=backend)[0]
    _check(k, backend, target)
    raise PipelineError("give --text or --image")


def load_query_encoder(index: Index, modality: str) -> None:
    """Build the recorded text or image extractor now (part of loading, not of the query): the same
    object extraction used, from the same record (:mod:`pipeline.features.extractors`)."""
    ex = _extractor(index, modality)
    if modality in index.encoders:
        return
    with _LOADING:  # a service's encoder workers may ask at once: one loads, the others find it loaded
        if modality not in index.encoders:
            _load_query_encoder(index, modality, ex)


def _text_record(index: Index, ex: dict) -> dict:
    """The text extractor's record, with the arithmetic ``index.text_precision`` asks for (a
    sentence encoder only). bf16 queries against fp32 database texts change a few query codes by a
    bit (1.25% of the demo's 2,000 captions at 16 bits, one bit each): said once, in the log."""
    want = index.text_precision
    recorded = str(ex.get("precision", "fp32"))
    if want is None or want == recorded:
        return ex
    if ex.get("kind") != "sentence":
        log.info("index %s: its texts are %s features; --text-precision %s does not apply", index.path,
                 ex.get("kind"), want)
        return ex
    log.warning("index %s: text queries in %s, the database texts were encoded in %s (a few query codes "
                "differ by a bit)", index.path, want, recorded)
    return {**ex, "precision": want}


#: Serialises the loading of query encoders (threads of a service).
_LOADING = threading.Lock()


def _load_query_encoder(index: Index, modality: str, ex: dict) -> None:
    from pipeline.features import extractors

    if modality == "text":
        enc = extractors.text_extractor(_text_record(index, ex), vocab=index.tag_vocab, device=index.device)
        enc.prepare_queries()  # a sentence encoder traces now, not at the first query
        index.encoders["text"] = enc
        return
    weights = str(ex["weights"])
    if weights not in ("random", "imagenet") and ex.get("weights_sha256") and Path(weights).is_file() \
            and sha256_file(weights) != ex["weights_sha256"]:
        raise PipelineError(f"index {index.path}: the checkpoint {weights} changed since the features were "
                            "extracted (its sha256 differs): image queries would not match the database")
    index.encoders["image"] = extractors.image_extractor(ex, device=index.device)
