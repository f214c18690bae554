"""A searchable index per data set, method and code length (``results/.../{bits}/index/``).

The folder holds ``index.h5`` (packed database codes of both modalities, item ids, labels, the
image PCA), ``model.pt`` (the trained encoders) and ``settings.json`` (image extractor weights
and text encoder): enough to encode a raw text or image and rank the database by Hamming
distance (ties by database index, like the evaluation).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.eval.codes import pack_bits
from pipeline.eval.hamming import topk
from pipeline.io import atomic_directory, read_arrays, read_strings, to_jsonable, write_arrays, write_strings


def build_index(index_dir: Path, *, model_path: Path, features, db_image: np.ndarray, db_text: np.ndarray,
                settings: dict) -> None:
    """Write the index folder atomically (a temporary folder renamed into place)."""
    with atomic_directory(index_dir) as tmp:
        db = features.database
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
        (tmp / "settings.json").write_text(json.dumps(to_jsonable(settings), indent=2, sort_keys=True))


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
    settings: dict
    model: Any  # pipeline.methods.Hasher: CMIMH or a baseline
    device: torch.device
    encoders: dict = field(default_factory=dict)  # query feature extractors, loaded once on first use


def load_index(path: str | Path, device: torch.device | None = None) -> Index:
    """Load an index folder; a missing or incomplete folder is one clear error."""
    from pipeline.methods import load_trained

    path = Path(path)
    for name in ("index.h5", "model.pt", "settings.json"):
        if not (path / name).is_file():
            raise PipelineError(f"not an index folder: {path} (missing {name})")
    device = device or torch.device("cpu")
    with h5py.File(path / "index.h5", "r") as f:
        db_image, db_text = f["db_image"][()], f["db_text"][()]
        ids = np.array(read_strings(f, "ids"))
        bits = int(f.attrs["bits"])
        pca = read_arrays(f, "image_pca")
        vocab = read_strings(f, "tag_vocab")
    model, _ = load_trained(path / "model.pt", device)
    settings = json.loads((path / "settings.json").read_text())
    return Index(path, bits, db_image, db_text, ids, pca, vocab, settings, model, device)


def text_query_features(index: Index, texts: list[str]) -> np.ndarray:
    """Text features exactly as extraction made them (same encoder and pooling, or tag vector)."""
    from pipeline.features import text as text_mod

    s = index.settings["text_features"]
    if s.get("kind", "sentence") == "tags":  # the words of the query that are tags of the vocabulary
        if not index.tag_vocab:
            raise PipelineError(f"index {index.path} uses tag vectors but stores no tag vocabulary")
        tags = [[w for w in re.findall(r"[\w-]+", t.lower())] for t in texts]
        if not any(w in set(index.tag_vocab) for w in tags[0]):
            raise PipelineError("none of the query's words is a tag of this data set's vocabulary")
        return text_mod.tag_vectors(tags, index.tag_vocab)
    load_query_encoder(index, "text")
    return text_mod.encode_sentences(index.encoders["text"], texts, progress=False)


def image_query_features(index: Index, paths: list[Path]) -> np.ndarray:
    """AlexNet FC7 of the images with the index's weights, projected by its PCA."""
    from pipeline.features.extract import apply_pca
    from pipeline.features.image import imagenet_transform
    from PIL import Image, UnidentifiedImageError

    s = index.settings["image_features"]
    load_query_encoder(index, "image")
    net = index.encoders["image"]
    tf = imagenet_transform(int(s.get("input_size", 224)))
    xs = []
    for p in paths:
        try:
            with Image.open(p) as im:
                xs.append(tf(im.convert("RGB")))
        except FileNotFoundError:
            raise PipelineError(f"image not found: {p}") from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            raise PipelineError(f"unreadable image: {p}") from None
    with torch.inference_mode():
        fc7 = net.to(index.device)(torch.stack(xs).to(index.device)).float().cpu().numpy()
    if index.pca is None:
        raise PipelineError(f"index {index.path} has no image PCA (features were imported); image queries need it")
    return apply_pca(fc7, index.pca)


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
        if not text.strip():
            raise PipelineError("empty --text query")
        code = index.model.encode_text(text_query_features(index, [text]))
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
    """Load the text encoder or image extractor now (part of loading, not of the query)."""
    s = index.settings["text_features" if modality == "text" else "image_features"]
    if modality == "text" and s.get("kind", "sentence") == "sentence" and "text" not in index.encoders:
        from pipeline.features import text as text_mod

        index.encoders["text"] = text_mod.load_text_encoder(s["model"], index.device, s.get("pooling", "mean"),
                                                            int(s.get("max_length", 64)))
    elif modality == "image" and "image" not in index.encoders:
        from pipeline.features.image import fc7_network

        index.encoders["image"] = fc7_network(str(s.get("weights", "imagenet")), int(index.settings["seed"]))[0]


def search_cli(a) -> None:
    """``cmimh search INDEX --text ... | --image ... -k N``: JSON lines on stdout."""
    from pipeline.model.train import resolve_device

    t0 = time.perf_counter()
    index = load_index(a.index, resolve_device("auto"))
    load_query_encoder(index, "text" if a.text is not None else "image")
    t1 = time.perf_counter()
    hits = search(index, text=a.text, image=a.image, k=a.k, target=a.target, backend=a.backend)
    t2 = time.perf_counter()
    for h in hits:
        sys.stdout.write(json.dumps(h) + "\n")
    print(f"loaded in {t1 - t0:.2f}s, query in {t2 - t1:.3f}s", file=sys.stderr)
