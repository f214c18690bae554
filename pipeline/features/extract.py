"""Entry points of the ``extract`` stage: image FC7, text features, and their assembly.

``cmimh extract image|text|assemble|import`` call these; each reads the resolved data set
settings (see :func:`pipeline.config.resolve`) and writes one HDF5 file atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.data.manifest import read_manifest
from pipeline.data.splits import split_indices
from pipeline.errors import PipelineError
from pipeline.features import image as image_mod
from pipeline.features import text as text_mod
from pipeline.features.store import SPLITS, check_arrays, write_features
from pipeline.io import atomic_output, open_h5, provenance, read_attrs, read_strings, sha256_file, write_strings

log = logging.getLogger(__name__)


def run_image(manifest: Path, settings: dict, out: Path, device: torch.device, progress: bool = True) -> None:
    """AlexNet FC7 of every image of a prepared data set into ``out``."""
    m = read_manifest(manifest)
    s = settings["image_features"]
    if s.get("model", "alexnet") != "alexnet":
        raise PipelineError(f"image_features.model: only 'alexnet' is supported, not {s['model']!r}")
    image_mod.extract_fc7(
        [m.image_path(i) for i in range(len(m.pairs))], [p.id for p in m.pairs], out,
        weights=str(s.get("weights", "imagenet")), seed=int(settings["seed"]), device=device,
        batch_size=int(s.get("batch_size", 64)), input_size=int(s.get("input_size", 224)),
        num_workers=int(s.get("num_workers", 0)), on_bad_image=s.get("on_bad_image", "error"),
        progress=progress, attrs={"manifest_sha256": sha256_file(manifest)})


def run_text(manifest: Path, settings: dict, out: Path, device: torch.device, progress: bool = True) -> None:
    """Sentence embeddings of the captions, or tag vectors, into ``out`` (dataset ``text``)."""
    m = read_manifest(manifest)
    s = settings["text_features"]
    kind = s.get("kind", "sentence")
    ids = [p.id for p in m.pairs]
    if kind == "sentence":
        enc = text_mod.load_text_encoder(s["model"], device, s.get("pooling", "mean"), int(s.get("max_length", 64)))
        feats = text_mod.encode_sentences(enc, [p.caption for p in m.pairs], int(s.get("batch_size", 128)),
                                          progress, ids)
        info = {"text_kind": "sentence", "text_model": enc.name, "text_model_source": enc.source,
                "pooling": enc.pooling, "max_length": enc.max_length}
    elif kind == "tags":
        vocab = m.tag_vocab or sorted({t for p in m.pairs for t in p.tags})
        feats = text_mod.tag_vectors([p.tags for p in m.pairs], vocab)
        info = {"text_kind": "tags", "tag_vocab_size": len(vocab)}
    else:
        raise PipelineError(f"text_features.kind must be 'sentence' or 'tags', not {kind!r}")
    with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("text", data=feats)
        if kind == "tags":  # kept so that a typed query can be turned into the same tag vector
            write_strings(f, "tag_vocab", vocab)
        f.attrs.update(info)
        f.attrs["manifest_sha256"] = sha256_file(manifest)
    log.info("text: %s features, shape %s", kind, feats.shape)


def fit_pca(x: np.ndarray, train: np.ndarray, dim: int, seed: int) -> dict:
    """PCA fitted on the training rows only (randomized SVD, seeded), as plain arrays."""
    from sklearn.decomposition import PCA

    if not 1 <= dim <= min(len(train), x.shape[1]):
        raise PipelineError(f"image_features.pca_dim={dim} must be between 1 and "
                            f"min(n_train={len(train)}, {x.shape[1]})")
    pca = PCA(n_components=dim, svd_solver="randomized", random_state=seed).fit(x[train])
    return {"components": pca.components_.astype(np.float32), "mean": pca.mean_.astype(np.float32),
            "explained_variance_ratio": pca.explained_variance_ratio_.astype(np.float32)}


def apply_pca(x: np.ndarray, pca: dict) -> np.ndarray:
    """Project rows with a stored PCA (also used to encode new query images)."""
    return ((x - pca["mean"]) @ pca["components"].T).astype(np.float32)


def run_assemble(manifest: Path, fc7_h5: Path, text_h5: Path, settings: dict, out: Path) -> None:
    """Drop unreadable pairs, split with the seed, fit PCA on the training split, write features.h5."""
    m = read_manifest(manifest)
    with h5py.File(fc7_h5, "r") as f:
        fc7, ok = f["fc7"][()], f["ok"][()].astype(bool)
        image_attrs = read_attrs(f)
    with h5py.File(text_h5, "r") as f:
        text = f["text"][()]
        tag_vocab = read_strings(f, "tag_vocab")
        text_attrs = read_attrs(f)
    labels = m.label_matrix()
    if not len(fc7) == len(text) == len(m.pairs):
        raise PipelineError(f"row counts differ: fc7 {len(fc7)}, text {len(text)}, manifest {len(m.pairs)} "
                            "(stale intermediate files? rerun extraction)")
    keep = ok & (labels.sum(1) > 0)
    dropped = {"unreadable_image": int((~ok).sum()), "no_label": int((ok & (labels.sum(1) == 0)).sum())}
    idx = np.flatnonzero(keep)
    seed = int(settings["seed"])
    splits = split_indices(len(idx), int(settings["n_query"]), int(settings["n_train"]), seed,
                           fixed=[m.pairs[i].split for i in idx])
    dim = int(settings["image_features"].get("pca_dim", 1024))
    pca = fit_pca(fc7[idx], splits["train"], dim, seed)
    image = apply_pca(fc7[idx], pca)
    prov = provenance(settings, dataset=settings["dataset"], seed=seed, stage="extract",
                      image=image_attrs, text=text_attrs, dropped=dropped,
                      manifest_sha256=sha256_file(manifest), classes=m.classes,
                      counts={s: int(len(v)) for s, v in splits.items()})
    write_features(out, image=image, text=text[idx], labels=labels[idx], splits=splits,
                   ids=[m.pairs[i].id for i in idx], provenance=prov, pca=pca, tag_vocab=tag_vocab)
    log.info("features: %d pairs kept (dropped %s); query %d, database %d, train %d; image %s, text %s",
             len(idx), dropped, len(splits["query"]), len(splits["database"]), len(splits["train"]),
             image.shape, text.shape)


def run_import(src: Path, settings: dict, out: Path) -> None:
    """A user's own features (HDF5 with ``image``, ``text``, ``labels``, optional splits) -> features.h5."""
    src = Path(src)
    with open_h5(src, "features file") as f:
        for key in ("image", "text", "labels"):
            if key not in f:
                raise PipelineError(f"{src}: missing dataset '{key}' (need image, text, labels)")
        image, text = f["image"][()].astype(np.float32), f["text"][()].astype(np.float32)
        labels = f["labels"][()]
        given = {s: f[s][()].astype(np.int64) for s in SPLITS if s in f}
        ids = read_strings(f, "ids") or [str(i) for i in range(len(image))]
    check_arrays(image, text, labels, str(src))
    seed = int(settings["seed"])
    if len(given) == 3:
        splits, protocol = given, "from file"
    elif given:
        raise PipelineError(f"{src}: has split(s) {sorted(given)} but not all of query, database, train")
    else:
        splits = split_indices(len(image), int(settings["n_query"]), int(settings["n_train"]), seed)
        protocol = "seeded"
    prov = provenance(settings, dataset=settings["dataset"], seed=seed, stage="import",
                      source_file=str(src.resolve()), source_sha256=sha256_file(src), split_protocol=protocol)
    write_features(out, image=image, text=text, labels=labels.astype(np.uint8), splits=splits, ids=ids,
                   provenance=prov)
    log.info("imported %s: %d pairs, splits %s", src, len(image), protocol)
