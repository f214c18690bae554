"""The ``extract`` stage: image features, text features, and ``features.h5``; one entry point
per rule, each writing one HDF5 file atomically from the settings :func:`pipeline.stages.resolve`
gives it:

=====================  =======================  ===============  =====================================
rule                   command                  entry point      output
=====================  =======================  ===============  =====================================
extract_image_shard    cmimh extract image      :func:`run_image`     image features of one shard of the images
extract_image          cmimh extract merge      :func:`run_merge`     the shards merged: ``image.h5``
extract_text           cmimh extract text       :func:`run_text`      sentence/CLIP embeddings, tags, words
extract                cmimh extract assemble   :func:`run_assemble`  ``features.h5`` (splits, PCA)
import_features        cmimh import             :func:`run_import`    ``features.h5`` from your own files
=====================  =======================  ===============  =====================================

The extractors (``image_features.model``, ``text_features.kind``/``model``) are those of
:mod:`pipeline.features.extractors`, each built from its settings record
(``ImageFeatures.record``, ``TextFeatures.record``), which the intermediate files store
(``image_settings``, ``text_settings``) and assembly checks.

Scale (NUS-WIDE: 187k images, MS-COCO: 122k): image and sentence extraction are resumable
(:mod:`pipeline.features.image`), the images can be split into contiguous shards extracted as
separate jobs (whole tar shards for a webdataset) and merged chunk by chunk (:func:`run_merge`),
and assembly never holds the n x 4,096 image matrix: the PCA is fitted exactly on the training
rows streamed from ``image.h5`` (:func:`fit_pca`, O(d^2) memory) and applied chunk by chunk
(:func:`apply_pca_rows`). A bag of words chooses its vocabulary at assembly, from the training rows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
import torch

from pipeline.data.manifest import read_manifest
from pipeline.data.splits import plan_split, split_indices
from pipeline.errors import PipelineError
from pipeline.features import extractors
from pipeline.features import image as image_mod
from pipeline.features import text as text_mod
from pipeline.features.pca import READ_CHUNK_ROWS, apply_pca_rows, fit_pca, read_rows_chunked
from pipeline.features.settings import LOW_LEVEL_MODELS, ImageFeatures, TextFeatures
from pipeline.features.store import write_features
from pipeline.features.work import digest
from pipeline.io import h5_output, open_h5, provenance, read_attrs, read_strings, sha256_file, write_strings

log = logging.getLogger(__name__)

# Attributes that must agree between the shards of one extraction.
SHARD_SAME = ("model", "dim", "weights", "weights_source", "weights_sha256", "input_size", "on_bad_image",
              "manifest_sha256", "image_settings", "images_sha256")
STALE = "a stale file: rerun its extraction (snakemake --forcerun {rule})"


def images_digest(m) -> str:
    """The identity of a manifest's images: ids, paths and checksums, in row order."""
    return digest([f"{p.id}\t{p.where}\t{p.sha256 or ''}" for p in m.pairs])


def texts_digest(m, kind: str) -> str:
    """The identity of a manifest's texts for ``kind``: the captions, or the tag lists (and vocabulary)."""
    if kind == "tags":
        return digest([json.dumps(m.tag_vocab)] + [f"{p.id}\t{json.dumps(p.tags)}" for p in m.pairs])
    return digest([f"{p.id}\t{p.caption}" for p in m.pairs])


def _check_recorded(path: Path, attrs: dict, key: str, want: dict, section: str, rule: str) -> None:
    """``attrs[key]`` (JSON) must equal ``want``; else one line naming the first setting that differs."""
    raw = attrs.get(key)
    if raw is None:
        raise PipelineError(f"{path}: no recorded {section} settings (made by an older version?); "
                            + STALE.format(rule=rule))
    got = json.loads(raw)
    for k in [*want, *(k for k in got if k not in want)]:  # the settings' own order: weights before seed
        if got.get(k) != want.get(k):
            raise PipelineError(f"{path} was made with {section}.{k}={got.get(k)!r} but the settings say "
                                f"{want.get(k)!r}: " + STALE.format(rule=rule))


def check_image_file(path: Path, attrs: dict, ids: list[str] | None, settings: dict, m) -> None:
    """An image features file is usable for these settings and this manifest: the same recorded
    settings, ids and image checksums (and, for a checkpoint, the same checkpoint file); else one line."""
    img = ImageFeatures.from_dict(settings["image_features"], "image_features")
    _check_recorded(path, attrs, "image_settings", img.record(settings["seed"]), "image_features", "extract_image")
    if ids is not None and ids != [p.id for p in m.pairs]:
        raise PipelineError(f"{path}: ids differ from {m.root / 'manifest.jsonl'}: " + STALE.format(rule="extract_image"))
    if attrs.get("images_sha256") != images_digest(m):
        raise PipelineError(f"{path}: made from other images than {m.root / 'manifest.jsonl'} lists (ids, files "
                            "or checksums changed): " + STALE.format(rule="extract_image"))
    w = img.weights
    if attrs.get("weights") == "checkpoint" and attrs.get("weights_sha256") and Path(w).is_file() \
            and sha256_file(w) != attrs["weights_sha256"]:
        raise PipelineError(f"{path}: made with another version of the checkpoint {w} (its sha256 changed): "
                            + STALE.format(rule="extract_image"))


def check_text_file(path: Path, attrs: dict, ids: list[str] | None, settings: dict, m) -> None:
    """A text features file is usable for these settings and this manifest; else one line."""
    rec = TextFeatures.from_dict(settings["text_features"], "text_features").record(settings["seed"])
    _check_recorded(path, attrs, "text_settings", rec, "text_features", "extract_text")
    if ids is not None and ids != [p.id for p in m.pairs]:
        raise PipelineError(f"{path}: ids differ from {m.root / 'manifest.jsonl'}: " + STALE.format(rule="extract_text"))
    if attrs.get("texts_sha256") != texts_digest(m, rec["kind"]):
        raise PipelineError(f"{path}: made from other {'tags' if rec['kind'] == 'tags' else 'captions'} than "
                            f"{m.root / 'manifest.jsonl'} holds: " + STALE.format(rule="extract_text"))


def shard_range(n: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``shard`` of ``shards``: contiguous, sizes differ by at most one."""
    if shards < 1 or not 0 <= shard < shards:
        raise PipelineError(f"shard {shard} of {shards}: need 0 <= shard < shards")
    if shards > n:
        raise PipelineError(f"image_features.shards={shards} exceeds the number of images ({n})")
    q, r = divmod(n, shards)
    start = shard * q + min(shard, r)
    return start, start + q + (1 if shard < r else 0)


def tar_groups(m) -> list[int] | None:
    """The first row of each tar shard's run of pairs, when every image is a tar member (else None)."""
    if not m.pairs or any(p.member is None for p in m.pairs):
        return None
    return [i for i, p in enumerate(m.pairs) if i == 0 or p.image != m.pairs[i - 1].image]


def image_rows(m, shard: int, shards: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of extraction shard ``shard`` of ``shards``: whole tar shards (balanced
    by count) when the images are in tar shards and there are at least as many; else
    :func:`shard_range`."""
    n = len(m.pairs)
    groups = tar_groups(m)
    if groups is None or shards > len(groups):
        return shard_range(n, shard, shards)
    g0, g1 = shard_range(len(groups), shard, shards)
    return groups[g0], (groups[g1] if g1 < len(groups) else n)


def run_image(manifest: Path, settings: dict, out: Path, device: torch.device, progress: bool = True,
              shard: tuple[int, int] | None = None, on_chunk: Callable[[int], None] | None = None) -> None:
    """Image features (``image_features.model``) of a prepared data set into ``out`` (all, or one
    shard ``(i, N)``).

    The output records its row range (``row_start``, ``row_stop``, ``n_total``), so a full run
    and the shards have one format and :func:`run_merge` accepts either.
    """
    m = read_manifest(manifest)
    s = ImageFeatures.from_dict(settings["image_features"], "image_features")
    rec = s.record(settings["seed"])
    n = len(m.pairs)
    i, k = shard if shard is not None else (0, 1)
    start, stop = image_rows(m, int(i), int(k))
    pairs = m.pairs[start:stop]
    if s.model in LOW_LEVEL_MODELS:
        _low_level_image(m, manifest, pairs, settings, out, rec, (start, stop, n, int(i), int(k)), progress)
        return
    # Which images these rows are: the manifest's relative paths and checksums (stable when the
    # data folder moves; a changed file or order restarts the work file instead of mixing rows).
    images = digest([f"{p.where}\t{p.sha256 or ''}" for p in pairs])
    ex = extractors.image_extractor(rec, channels_last=s.use_channels_last())
    image_mod.extract_images(
        ex, [m.image_ref(j) for j in range(start, stop)], [p.id for p in pairs], out, device=device,
        batch_size=s.batch_size, num_workers=s.num_workers, on_bad_image=s.on_bad_image, progress=progress,
        chunk_batches=s.chunk_batches, sha256=[p.sha256 for p in pairs],
        fingerprint_extra={"rows": [start, stop, n], "images": images}, on_chunk=on_chunk,
        attrs={"manifest_sha256": sha256_file(manifest), "row_start": start, "row_stop": stop, "n_total": n,
               "shard": int(i), "shards": int(k), "image_settings": json.dumps(rec, sort_keys=True),
               "precision": ex.precision, "channels_last": int(ex.channels_last),
               "images_sha256": images_digest(m)})


def _low_level_image(m, manifest: Path, pairs, settings: dict, out: Path, rec: dict, rows: tuple,
                     progress: bool) -> None:
    """NUS-WIDE's official 500-d bag of SIFT words for these pairs (their ids are image-list rows),
    written in the format of :func:`pipeline.features.image.extract_images`, so that merge and
    assembly treat it as any image features file."""
    from pipeline.data import nuswide

    start, stop, n, i, k = rows
    ll = settings.get("low_level") or {}
    try:
        ids = [int(p.id) for p in pairs]
    except ValueError:
        raise PipelineError(f"{manifest}: image_features.model {rec['model']}: the pair ids must be NUS-WIDE "
                            "image-list rows (a manifest of the nuswide adapter)") from None
    download = Path(ll["download_dir"]) if ll.get("download_dir") else Path(manifest).parent / "downloads"
    feats, info = nuswide.read_bow_sift(ids, Path(ll["path"]) if ll.get("path") else None, download,
                                        ll.get("mirror"), progress=progress)
    with h5_output(out) as f:
        f.create_dataset(image_mod.DATASET, data=feats)
        f.create_dataset("ok", data=np.ones(len(pairs), np.uint8))
        write_strings(f, "ids", [p.id for p in pairs])
        f.attrs.update({"model": rec["model"], "dim": int(feats.shape[1]), "weights": "official",
                        "weights_source": info["file"], "weights_sha256": info["sha256"], "input_size": 0,
                        "on_bad_image": "error", "n_bad_images": 0, "bad_image_ids": "[]",
                        "low_level": json.dumps(info, sort_keys=True), "manifest_sha256": sha256_file(manifest),
                        "row_start": start, "row_stop": stop, "n_total": n, "shard": i, "shards": k,
                        "image_settings": json.dumps(rec, sort_keys=True), "images_sha256": images_digest(m)})


def run_merge(parts: Sequence[Path], out: Path, manifest: Path | None = None, progress: bool = True,
              chunk_rows: int = READ_CHUNK_ROWS) -> None:
    """Shard files -> one ``image.h5`` (same contract as an unsharded run), copied chunk by chunk.

    The shards must tile ``0..n`` without gap or overlap and agree on weights, input size,
    policy and manifest; with ``manifest``, their ids must be its ids in order (a stale shard
    is an error, not a silent mix).
    """
    from tqdm import tqdm

    if not parts:
        raise PipelineError("merge: no shard files given")
    infos = []
    for p in map(Path, parts):
        with open_h5(p, "image features shard") as f:
            for key in (image_mod.DATASET, "ok", "ids"):
                if key not in f:
                    raise PipelineError(f"{p}: missing dataset '{key}' (not an image features file; rerun extraction)")
            a = read_attrs(f)
            if not {"row_start", "row_stop", "n_total"} <= set(a):
                raise PipelineError(f"{p}: no row range attributes (written by an older version? rerun extraction)")
            rows = f[image_mod.DATASET]
            if len(rows) != int(a["row_stop"]) - int(a["row_start"]):
                raise PipelineError(f"{p}: {len(rows)} rows for the range {a['row_start']}..{a['row_stop']}")
            a["_dim"] = int(rows.shape[1])
            infos.append((int(a["row_start"]), int(a["row_stop"]), int(a["n_total"]), p, a))
    infos.sort(key=lambda t: t[:2])
    n = infos[0][2]
    expect = 0
    for start, stop, total, p, a in infos:
        if total != n:
            raise PipelineError(f"{p}: part of a {total}-row extraction, {infos[0][3]} of a {n}-row one")
        if start != expect:
            raise PipelineError(f"{p}: starts at row {start}, expected {expect} "
                                f"({'overlap' if start < expect else 'missing shard'})")
        for key in SHARD_SAME:
            if a.get(key) != infos[0][4].get(key):
                raise PipelineError(f"{p}: {key} differs from {infos[0][3]} ({a.get(key)!r} vs {infos[0][4].get(key)!r})")
        expect = stop
    if expect != n:
        raise PipelineError(f"shards cover rows 0..{expect} of {n}: missing shard")
    ids: list[str] = []
    bad: list[str] = []
    oks = []
    for _, _, _, p, a in infos:
        with h5py.File(p, "r") as f:
            ids += read_strings(f, "ids")
            oks.append(f["ok"][()])
        bad += json.loads(a.get("bad_image_ids", "[]"))
    if manifest is not None:
        mids = [q.id for q in read_manifest(manifest).pairs]
        if mids != ids:
            raise PipelineError(f"shard ids differ from {manifest} (stale shard files? rerun extraction)")
    dim = infos[0][4]["_dim"]
    attrs = {k: v for k, v in infos[0][4].items() if k not in ("shard", "bad_image_ids", "n_bad_images", "_dim")}
    attrs.update({"row_start": 0, "row_stop": n, "shards": len(infos), "n_bad_images": len(bad),
                  "bad_image_ids": json.dumps(bad)})
    with h5_output(out) as g:
        dst = g.create_dataset(image_mod.DATASET, (n, dim), "float32")
        with tqdm(total=n, desc="merge image features", unit="img", disable=not progress) as bar:
            for start, stop, _, p, _ in infos:
                with h5py.File(p, "r") as f:
                    src = f[image_mod.DATASET]
                    for s in range(0, stop - start, chunk_rows):
                        e = min(s + chunk_rows, stop - start)
                        dst[start + s:start + e] = src[s:e]
                        bar.update(e - s)
        g.create_dataset("ok", data=np.concatenate(oks).astype(np.uint8))
        write_strings(g, "ids", ids)
        g.attrs.update(attrs)
    log.info("image features: merged %d shard(s) into %s: %d images, %d unreadable", len(infos), out, n, len(bad))


def run_text(manifest: Path, settings: dict, out: Path, device: torch.device, progress: bool = True,
             on_chunk: Callable[[int], None] | None = None) -> None:
    """Text features into ``out``: sentence or CLIP embeddings of the captions (dataset ``text``,
    resumable), tag vectors (``text`` and ``tag_vocab``), or, for a bag of words, every caption's
    words as a sparse 0/1 matrix (``bow_indptr``, ``bow_indices``, ``bow_words``) whose vocabulary
    assembly chooses on the training split."""
    m = read_manifest(manifest)
    s = TextFeatures.from_dict(settings["text_features"], "text_features")
    kind = s.kind
    rec = s.record(settings["seed"])
    ids = [p.id for p in m.pairs]
    recorded = {"text_settings": json.dumps(rec, sort_keys=True),
                "texts_sha256": texts_digest(m, kind), "manifest_sha256": sha256_file(manifest)}
    captions = [p.caption for p in m.pairs]
    if kind in ("sentence", "clip"):
        enc = extractors.text_extractor(rec, device=device)
        if kind == "sentence":
            info = {"text_kind": "sentence", "text_model": enc.name, "text_model_source": enc.source,
                    "pooling": enc.pooling, "max_length": enc.max_length, **recorded}
        else:
            w = enc.weights
            info = {"text_kind": "clip", "text_model": enc.name, "weights": w.name, "weights_source": w.source,
                    "weights_sha256": w.sha256 or "", **recorded}
        text_mod.encode_sentences_h5(enc, captions, out, ids=ids, batch_size=s.batch_size,
                                     chunk_batches=s.chunk_batches, progress=progress, attrs=info,
                                     on_chunk=on_chunk)
        log.info("text: %s features, %d x %d", kind, len(ids), enc.dim)
        return
    if kind == "bow":
        from pipeline.features.extractors import bow

        text_mod.check_texts(captions, ids)
        counts, words = bow.count_matrix(captions, s.stop_words)
        with h5_output(out) as f:
            f.create_dataset("bow_indptr", data=counts.indptr.astype(np.int64))
            f.create_dataset("bow_indices", data=counts.indices.astype(np.int32))
            write_strings(f, "bow_words", words)
            write_strings(f, "ids", ids)
            f.attrs.update({"text_kind": "bow", "bow_words": len(words), **recorded})
        log.info("text: bag of words, %d captions, %d distinct words (the vocabulary is chosen at assembly, "
                 "on the training split)", len(ids), len(words))
        return
    vocab = m.tag_vocab or sorted({t for p in m.pairs for t in p.tags})
    feats = text_mod.tag_vectors([p.tags for p in m.pairs], vocab)
    with h5_output(out) as f:
        f.create_dataset("text", data=feats)
        write_strings(f, "ids", ids)
        # kept so that a typed query can be turned into the same tag vector
        write_strings(f, "tag_vocab", vocab)
        f.attrs.update({"text_kind": "tags", "tag_vocab_size": len(vocab), **recorded})
    log.info("text: tag features, shape %s", feats.shape)


def _bow_rows(ft, n: int, idx: np.ndarray, train_rows: np.ndarray, s: TextFeatures) -> tuple[np.ndarray, list[str], dict]:
    """The bag of words of rows ``idx`` over the vocabulary chosen on ``train_rows``."""
    from scipy.sparse import csr_matrix

    from pipeline.features.extractors import bow

    indptr, indices = ft["bow_indptr"][()], ft["bow_indices"][()]
    words = read_strings(ft, "bow_words")
    counts = csr_matrix((np.ones(len(indices), np.uint8), indices, indptr), shape=(n, len(words)))
    cols = bow.choose_vocabulary(counts[train_rows], words, s.vocab_size, s.min_count)
    vocab = [words[c] for c in cols]
    text = counts[idx][:, cols].toarray().astype(np.float32)
    info = {"words_in_captions": len(words), "vocab_size": len(vocab), "min_count": int(s.min_count),
            "fit_rows": int(len(train_rows)), "empty_rows": int((text.sum(1) == 0).sum())}
    if info["empty_rows"]:
        log.warning("bag of words: %d of %d pairs have no word of the %d-word vocabulary (their text vector is 0)",
                    info["empty_rows"], len(idx), len(vocab))
    return text, vocab, info


def run_assemble(manifest: Path, image_h5: Path, text_h5: Path, settings: dict, out: Path) -> None:
    """Drop unreadable (and, with labels, unlabelled) pairs, split with the seed, fit PCA on the
    training split, write features.h5.

    The image matrix stays on disk: the PCA streams the training rows, the projection streams the
    kept rows; only the projected (n x pca_dim) matrix is held, as ``features.h5`` needs it. A
    collection without labels keeps every readable pair (its labels are n x 0; evaluation is paired).
    """
    m = read_manifest(manifest)
    labels = m.label_matrix()
    mids = [p.id for p in m.pairs]
    seed = int(settings["seed"])
    dim = ImageFeatures.from_dict(settings["image_features"], "image_features").pca_dim
    ts = TextFeatures.from_dict(settings["text_features"], "text_features")
    text_keys = ("bow_indptr", "bow_indices", "bow_words") if ts.kind == "bow" else ("text",)
    with open_h5(image_h5, "image features file") as fi, open_h5(text_h5, "text features file") as ft:
        for f, keys in ((fi, (image_mod.DATASET, "ok")), (ft, text_keys)):
            for key in keys:
                if key not in f:
                    raise PipelineError(f"{f.filename}: missing dataset '{key}' (rerun extraction)")
        rows_ds = fi[image_mod.DATASET]
        ok = fi["ok"][()].astype(bool)
        image_attrs, text_attrs = read_attrs(fi), read_attrs(ft)
        image_ids, tag_vocab, text_ids = read_strings(fi, "ids"), read_strings(ft, "tag_vocab"), read_strings(ft, "ids")
        n_text = len(ft["text"]) if ts.kind != "bow" else len(ft["bow_indptr"]) - 1
        if not len(rows_ds) == n_text == len(m.pairs):
            raise PipelineError(f"row counts differ: image {len(rows_ds)}, text {n_text}, manifest {len(m.pairs)} "
                                "(stale intermediate files? rerun extraction)")
        if image_ids is not None and image_ids != mids:
            raise PipelineError(f"{image_h5}: ids differ from {manifest} (stale intermediate file? rerun extraction)")
        check_image_file(image_h5, image_attrs, image_ids, settings, m)
        check_text_file(text_h5, text_attrs, text_ids, settings, m)
        labelled = m.labelled
        keep = ok & (labels.sum(1) > 0) if labelled else ok.copy()
        idx = np.flatnonzero(keep)
        fixed = [m.pairs[i].split for i in idx]
        is_fixed = bool(fixed) and all(f in ("query", "database") for f in fixed)
        proto = settings.get("protocol")
        n_val = 0
        if proto and proto.get("split"):
            # the protocol's split (its sizes planned on the pairs kept, shrunk where they do not fit)
            sizes, notes = plan_split(len(idx), proto["split"], float(proto["shrink"]),
                                      sum(f == "query" for f in fixed) if is_fixed else None)
            n_query, n_val, n_train = sizes["n_query"], sizes["n_val"], sizes["n_train"]
            proto = {**proto, "sizes": sizes, "notes": list(proto.get("notes") or []) + notes}
            for note in notes:
                log.warning("protocol %s: %s", proto["name"], note)
        else:
            n_train, n_query = int(settings["n_train"]), int(settings["n_query"])
        n_db = len(idx) - (sum(f == "query" for f in fixed) if is_fixed else n_query) - n_val
        capped = None
        if 0 < n_db < n_train and len(idx) < len(m.pairs):
            # pairs were dropped (unreadable images, no label): the database shrank below n_train,
            # as on the demo, whose n_train is its whole database. Train on all of it, and say so.
            capped = {"asked": n_train, "used": n_db, "dropped_pairs": int(len(m.pairs) - len(idx))}
            log.warning("extract: n_train %d capped to the database size %d (%d pairs dropped)", n_train, n_db,
                        capped["dropped_pairs"])
            n_train = n_db
        splits = split_indices(len(idx), n_query, n_train, seed, fixed=fixed, n_val=n_val)
        train_rows = idx[splits["train"]]
        pca = fit_pca(rows_ds, train_rows, dim, seed)
        image = apply_pca_rows(rows_ds, idx, pca)
        bow_info = None
        if ts.kind == "bow":
            text, tag_vocab, bow_info = _bow_rows(ft, len(m.pairs), idx, train_rows, ts)
        else:
            text = read_rows_chunked(ft["text"], idx)
    bad_ids = [mids[i] for i in np.flatnonzero(~ok)]
    image_attrs.pop("bad_image_ids", None)  # listed once, under dropped
    dropped = {"unreadable_image": int((~ok).sum()), "unreadable_image_ids": bad_ids,
               "no_label": int((ok & (labels.sum(1) == 0)).sum()) if labelled else 0}
    prov = provenance(settings, dataset=settings["dataset"], seed=seed, stage="extract",
                      image=image_attrs, text=text_attrs, dropped=dropped,
                      pca={"method": "exact (streamed covariance + eigh, or SVD when n_train <= d)",
                           "fit_rows": int(len(train_rows)), "dim": dim},
                      manifest_sha256=sha256_file(manifest), classes=m.classes, labelled=labelled,
                      n_train_capped=capped, bag_of_words=bow_info, counts={s: int(len(v)) for s, v in splits.items()},
                      **({"protocol": proto} if proto else {}))
    write_features(out, image=image, text=text, labels=labels[idx], splits=splits,
                   ids=[mids[i] for i in idx], provenance=prov, pca=pca, tag_vocab=tag_vocab)
    log.info("features: %d pairs kept (dropped %d unreadable, %d unlabelled); query %d, database %d, train %d; "
             "image %s, text %s%s", len(idx), dropped["unreadable_image"], dropped["no_label"], len(splits["query"]),
             len(splits["database"]), len(splits["train"]), image.shape, text.shape,
             "" if labelled else "; no labels: evaluation is paired")


def run_import(src: Path, settings: dict, out: Path) -> None:
    """A user's own features -> features.h5, so that they start at training.

    ``src``: one file or a list of files: ours (``image``, ``text``, ``labels``, optional splits,
    .h5 or .npz) or the DCMH / DJSRH / UCCH / split-style ``.mat`` (v4 to v7.3) and ``.h5`` files
    that :mod:`pipeline.features.importers` reads; ``settings['import_keys']`` names the
    variables where detection cannot. The file's split is kept; without one, the seeded protocol
    of :func:`pipeline.data.splits.split_indices` (``n_query``, ``n_train``). The provenance keeps
    each source's SHA-256, the format, the keys used and the split protocol.
    """
    from pipeline.features.importers import choose_splits, load_feature_file

    srcs = [Path(p) for p in src] if isinstance(src, (list, tuple)) else [Path(src)]
    keys = settings.get("import_keys") or {}
    imp = load_feature_file(srcs, image_key=keys.get("image"), text_key=keys.get("text"),
                            label_key=keys.get("labels"))
    seed = int(settings.get("seed", 0))
    n_query, n_train = settings.get("n_query"), settings.get("n_train")
    proto = settings.get("protocol")
    if proto and proto.get("split"):
        if imp.splits:  # the file's own split is the data set's: kept, said so
            proto = {**proto, "notes": list(proto.get("notes") or [])
                     + ["the features file has its own split: kept instead of the protocol's"]}
            splits, protocol = choose_splits(imp, None, None if n_train is None else int(n_train), seed)
        else:
            from pipeline.data.splits import plan_split

            sizes, notes = plan_split(imp.n, proto["split"], float(proto["shrink"]))
            proto = {**proto, "sizes": sizes, "notes": list(proto.get("notes") or []) + notes}
            splits = split_indices(imp.n, sizes["n_query"], sizes["n_train"], seed, n_val=sizes["n_val"])
            protocol = f"protocol {proto['name']} (seeded)"
        for note in proto["notes"]:
            log.warning("protocol %s: %s", proto["name"], note)
    else:
        splits, protocol = choose_splits(imp, None if n_query is None else int(n_query),
                                         None if n_train is None else int(n_train), seed)
    sources = [{"path": str(p.resolve()), "sha256": sha256_file(p)} for p in srcs]
    allow = bool(settings.get("allow_overlap", False))
    prov = provenance(settings, dataset=settings.get("dataset", "imported"), seed=seed, stage="import",
                      sources=sources, source_format=imp.source_format, keys_used=imp.keys_used,
                      split_protocol=protocol, import_notes=imp.notes, allow_overlap=allow,
                      counts={s: int(len(v)) for s, v in splits.items()}, **({"protocol": proto} if proto else {}))
    if allow:
        overlap = {o: int(len(np.intersect1d(splits["query"], splits[o]))) for o in ("database", "train")}
        if any(overlap.values()):
            log.warning("import: allow_overlap is set: %d queries are in the database, %d in the training split",
                        overlap["database"], overlap["train"])
    write_features(out, image=imp.image, text=imp.text, labels=imp.labels, splits=splits,
                   ids=imp.ids or [str(i) for i in range(imp.n)], provenance=prov)
    log.info("imported %s (%s): %d pairs; query %d, database %d, train %d (%s)",
             ", ".join(map(str, srcs)), imp.source_format, imp.n, len(splits["query"]),
             len(splits["database"]), len(splits["train"]), protocol)
