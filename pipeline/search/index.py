"""A searchable index per data set, method and code length (``results/.../{bits}/index/``).

The folder holds ``index.h5`` (packed database codes of both modalities, item ids, labels, the
image PCA, the tag vocabulary), ``model.pt`` (the trained encoders) and ``index.json`` (format,
code length, and which feature extractors made the features: taken from the features file's
provenance, never from the config, so a query is encoded exactly as the database was). Features
imported from elsewhere have unknown extractors: such an index answers no raw text or image query,
and says so in one line. Ranking is by Hamming distance, ties by database index, as in evaluation.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.eval.codes import pack_bits
from pipeline.eval.hamming import topk
from pipeline.io import (atomic_directory, open_h5, read_arrays, read_strings, sha256_file, to_jsonable, write_arrays,
                         write_strings)

INDEX_FORMAT = "cmimh-index/2"


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


def build_index(index_dir: Path, *, model_path: Path, features, db_rows: np.ndarray, db_image: np.ndarray,
                db_text: np.ndarray, settings: dict) -> None:
    """Write the index folder atomically (a temporary folder renamed into place): the database
    rows ``db_rows`` of ``features`` with their codes."""
    with atomic_directory(index_dir) as tmp:
        db = db_rows
        with h5py.File(tmp / "index.h5", "w") as f:
            f.create_dataset("db_image", data=pack_bits(db_image))
            f.create_dataset("db_text", data=pack_bits(db_text))
            write_strings(f, "ids", features.ids[db])
            f.create_dataset("labels", data=features.labels[db])
            f.attrs["bits"] = int(db_image.shape[1])
            if features.tag_vocab is not None:
                write_strings(f, "tag_vocab", features.tag_vocab)
            if features.pca is not None:
                write_arrays(f, "image_pca", features.pca)
        shutil.copyfile(model_path, tmp / "model.pt")
        meta = {"format": INDEX_FORMAT, "bits": int(db_image.shape[1]), "dataset": settings.get("dataset"),
                "extractors": recorded_extractors(features)}
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
    device: torch.device
    encoders: dict = field(default_factory=dict)  # query feature extractors, loaded once on first use


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


def load_index(path: str | Path, device: torch.device | None = None) -> Index:
    """Load an index folder; a missing, incomplete or damaged folder is one clear error."""
    from pipeline.methods.base import load_model

    path = Path(path)
    if not path.is_dir():
        raise PipelineError(f"not an index folder: {path}")
    for name in ("index.h5", "model.pt", "index.json"):
        if not (path / name).is_file():
            raise PipelineError(f"not an index folder: {path} (missing {name})")
    meta = _read_index_json(path)
    device = device or torch.device("cpu")
    with open_h5(path / "index.h5", "index") as f:
        for key in ("db_image", "db_text", "ids"):
            if key not in f:
                raise PipelineError(f"{path / 'index.h5'}: missing dataset '{key}' (damaged index; rerun encode)")
        db_image, db_text = f["db_image"][()], f["db_text"][()]
        ids = np.array(read_strings(f, "ids"))
        bits = int(f.attrs.get("bits", 8 * db_image.shape[1]))
        pca = read_arrays(f, "image_pca")
        vocab = read_strings(f, "tag_vocab")
    if not (len(ids) == len(db_image) == len(db_text)) or db_image.shape[1:] != db_text.shape[1:]:
        raise PipelineError(f"{path / 'index.h5'}: codes and ids disagree in size (damaged index; rerun encode)")
    model, _ = load_model(path / "model.pt", device)
    return Index(path, bits, db_image, db_text, ids, pca, vocab, meta["extractors"], model, device)


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


def check_query_text(text: str) -> str:
    """A typed query: non-empty, valid UTF-8 (a shell can pass undecodable bytes); else one line."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PipelineError("--text is not valid UTF-8 (check the terminal's encoding)") from None
    if not text.strip():
        raise PipelineError("empty --text query")
    return text


def text_query_features(index: Index, texts: list[str]) -> np.ndarray:
    """Text features exactly as extraction made them: the recorded text extractor's ``query``."""
    ex = _extractor(index, "text")
    if ex["kind"] in ("tags", "bow") and not index.tag_vocab:
        raise PipelineError(f"index {index.path} uses {'tag vectors' if ex['kind'] == 'tags' else 'a bag of words'} "
                            "but stores no vocabulary")
    load_query_encoder(index, "text")
    return index.encoders["text"].query(texts)


def image_query_features(index: Index, paths: list[Path]) -> np.ndarray:
    """The recorded image extractor's features of the images, projected by the index's PCA."""
    from pipeline.features.image import open_rgb
    from pipeline.features.pca import apply_pca
    from PIL import UnidentifiedImageError

    load_query_encoder(index, "image")
    ex = index.encoders["image"]
    xs = []
    for p in paths:
        try:
            xs.append(ex.preprocess(open_rgb(p)))
        except FileNotFoundError:
            raise PipelineError(f"image not found: {p}") from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            raise PipelineError(f"unreadable image: {p}") from None
    return apply_pca(ex.encode(torch.stack(xs)), index.pca)


def search(index: Index, *, text: str | None = None, image: str | Path | None = None, k: int = 10,
           target: str | None = None, backend: str = "exact") -> list[dict]:
    """Top-k database items for one text or image query: ``[{rank, id, distance}]``.

    ``backend``: "exact" (:func:`topk`), "faiss" (faiss-cpu exact flat index, same results) or
    "faiss-hash" (faiss-cpu hash index, approximate; may return fewer than k). The faiss index
    is built on first use and cached in ``index.encoders``.
    """
    if k < 1:
        raise PipelineError(f"-k must be >= 1, not {k}")
    if backend not in ("exact", "faiss", "faiss-hash"):
        raise PipelineError(f"unknown search backend {backend!r} (use exact, faiss or faiss-hash)")
    if text is not None:
        code = index.model.encode_text(text_query_features(index, [check_query_text(text)]))
        target = target or "image"
    elif image is not None:
        code = index.model.encode_image(image_query_features(index, [Path(image)]))
        target = target or "text"
    else:
        raise PipelineError("give --text or --image")
    db = index.db_image if target == "image" else index.db_text
    if backend == "exact":
        idx, dist = topk(pack_bits(code), db, k)
    else:
        from pipeline.search.faiss_backend import FaissBinaryIndex

        kind = "flat" if backend == "faiss" else "hash"
        key = f"faiss-{target}-{kind}"
        if key not in index.encoders:
            index.encoders[key] = FaissBinaryIndex(db, kind)
        idx, dist = index.encoders[key].search(pack_bits(code), k)
    return [{"rank": r + 1, "id": str(index.ids[j]), "distance": int(d), "target": target}
            for r, (j, d) in enumerate(zip(idx[0], dist[0])) if j >= 0]


def load_query_encoder(index: Index, modality: str) -> None:
    """Build the recorded text or image extractor now (part of loading, not of the query): the same
    object extraction used, from the same record (:mod:`pipeline.features.extractors`)."""
    from pipeline.features import extractors

    ex = _extractor(index, modality)
    if modality in index.encoders:
        return
    if modality == "text":
        index.encoders["text"] = extractors.text_extractor(ex, vocab=index.tag_vocab, device=index.device)
        return
    weights = str(ex["weights"])
    if weights not in ("random", "imagenet") and ex.get("weights_sha256") and Path(weights).is_file() \
            and sha256_file(weights) != ex["weights_sha256"]:
        raise PipelineError(f"index {index.path}: the checkpoint {weights} changed since the features were "
                            "extracted (its sha256 differs): image queries would not match the database")
    index.encoders["image"] = extractors.image_extractor(ex, device=index.device)
