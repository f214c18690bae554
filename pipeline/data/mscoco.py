"""MS-COCO 2017 as image-caption pairs, the paper's third benchmark (CMIMH, TNNLS 2023, sec. IV-A).

Protocol (paper sec. IV-A; ``../shared/paper/method.md``, "Protocol"): the 118,287 train 2017
images are the retrieval database and the 5,000 val 2017 images the queries; images without any
category annotation are dropped (leaving 117,266 / 4,952); each image's text is ONE of its
captions, chosen at random with the seed; labels are the 80 object categories (Lin et al.,
"Microsoft COCO: common objects in context", ECCV 2014).

Input, ``settings["path"]``: a folder the user already has, holding either the official archives
(``train2017.zip``, ``val2017.zip``, ``annotations_trainval2017.zip``) or their extracted forms
(``train2017/``, ``val2017/``, ``annotations/``); each piece may be in either form, an extracted
one is preferred. Without ``path`` the three archives of :data:`SOURCES` are downloaded into
``settings["download_dir"]`` (default ``out_dir/downloads``) with :func:`pipeline.data.download.fetch`.

Rules, each fixed so that a pair does not depend on the other images:

* classes: the categories of ``instances_*2017.json`` sorted by category id (1..90 with gaps);
  label indices point into that list (``meta.json`` records the ids in ``category_ids``);
* labels: the distinct categories of the image's instance annotations, crowd regions included
  (``iscrowd`` = 1); an image with none is dropped and counted (``without_category``);
* caption: the image's captions are whitespace-normalised, empty ones discarded, the rest sorted
  by annotation id, and one is drawn with ``numpy.random.default_rng([seed, image_id])``; an
  image left with no caption is dropped and counted (``without_caption``);
* ids are ``"{coco_split}/{file stem}"``, e.g. ``"val2017/000000000139"`` (unique, and they name
  the file); ``split`` is ``"query"`` for val 2017 and ``"database"`` for train 2017; the pairs are
  written queries first, each split sorted by image id.

Images: extracted folders are referenced in place by absolute path (``Manifest.image_path`` joins
the root with ``image``, and joining with an absolute path yields that path), so no 19 GB copy
is made -- the manifest is then tied to that location. From archives only the kept images are
extracted, to ``out_dir/images/{train2017,val2017}/``; a file already there with the member's
size and CRC-32 is kept (a killed run resumes). ``hash_images`` (default true) stores each image's
SHA-256. ``meta.json`` ``provenance`` records the sources' paths and SHA-256, and per split the
counts ``images`` (in ``instances_*.json``), ``without_category``, ``without_caption`` (had a
category), ``kept`` (= images - without_category - without_caption) and ``empty_captions``
(blank caption annotations of images with a category, ignored).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from pipeline.data.download import Remote, fetch
from pipeline.data.manifest import Pair, begin_rewrite, write_manifest
from pipeline.errors import PipelineError
from pipeline.io import atomic_output, sha256_file

log = logging.getLogger(__name__)

ADAPTER_VERSION = "mscoco-1"

# The official archives, as linked from https://cocodataset.org/#download. Sizes and SHA-256:
# tensorflow/datasets, tensorflow_datasets/url_checksums/coco.txt (the train2017 SHA-256 is also
# quoted by an independent audit). MD5: PaddleDetection (ppdet/utils/download.py, DATASETS['coco']),
# NVIDIA DeepLearningExamples and intel/neural-compressor download scripts -- all three agree.
SOURCES: dict[str, Remote] = {
    "annotations": Remote(
        url="http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        filename="annotations_trainval2017.zip",
        sha256="113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
        md5="f4bbac642086de4f52a3fdda2de5fa2c", size=252907541),
    "val2017": Remote(
        url="http://images.cocodataset.org/zips/val2017.zip", filename="val2017.zip",
        sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
        md5="442b8da7639aecaf257c1dceb8ba8c80", size=815585330),
    "train2017": Remote(
        url="http://images.cocodataset.org/zips/train2017.zip", filename="train2017.zip",
        sha256="69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929",
        md5="cced6f7f71b7629ddf16f17bbcfab6b2", size=19336861798),
}

# (COCO split, manifest split), in manifest order: queries first.
SPLITS: tuple[tuple[str, str], ...] = (("val2017", "query"), ("train2017", "database"))

CAPTION_RULE = ("whitespace-normalised non-empty captions sorted by annotation id; "
                "index numpy.random.default_rng([seed, image_id]).integers(n)")

_FILE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------------------------
# Captions


def normalize_caption(text: Any) -> str:
    """Collapse runs of whitespace (newlines, tabs, doubled spaces) and strip the ends."""
    return " ".join(str(text).split()) if text is not None else ""


def choose_caption(captions: list[tuple[int, str]], seed: int, image_id: int) -> str | None:
    """One caption of an image, or None when it has no non-empty one.

    ``captions`` are ``(annotation id, text)``. Sorting by annotation id and seeding the
    generator with ``(seed, image_id)`` makes the choice independent of the json's order and of
    every other image, so adding or removing images never changes a pair's caption.
    """
    cands = [c for _, c in sorted((int(a), normalize_caption(t)) for a, t in captions)]
    cands = [c for c in cands if c]
    if not cands:
        return None
    rng = np.random.default_rng([int(seed), int(image_id)])
    return cands[int(rng.integers(len(cands)))]


# --------------------------------------------------------------------------------------------
# Annotation files: parsed with the stdlib json, slimmed object by object


class _Img(NamedTuple):
    id: Any
    file_name: Any


class _Cat(NamedTuple):
    id: Any
    name: Any


class _Inst(NamedTuple):
    image_id: Any
    category_id: Any


class _Cap(NamedTuple):
    id: Any
    image_id: Any
    caption: Any


class _Top(dict):
    """The top-level object of a COCO annotation file (only the lists we use)."""


def _slim(d: dict) -> Any:
    """json ``object_hook``: keep only what the adapter needs of each object.

    The hook sees every object right after it is decoded, so an annotation's segmentation
    polygons are freed at once instead of living until the whole (~450 MB) file is parsed.
    """
    if "images" in d and "annotations" in d:
        return _Top({k: d[k] for k in ("images", "annotations", "categories") if k in d})
    if "category_id" in d and "image_id" in d:
        return _Inst(d["image_id"], d["category_id"])
    if "caption" in d and "image_id" in d:
        return _Cap(d.get("id"), d["image_id"], d["caption"])
    if "file_name" in d and "id" in d:
        return _Img(d["id"], d["file_name"])
    if "name" in d and "id" in d and "supercategory" in d:
        return _Cat(d["id"], d["name"])
    return None  # info, licenses, RLE segmentations, ...


@dataclass(frozen=True)
class _JsonSource:
    """An annotation file: a json file, or a member of an archive."""

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


def _load_annotations(src: _JsonSource, name: str) -> _Top:
    try:
        if src.member is None:
            with open(src.path, encoding="utf-8") as f:
                obj = json.load(f, object_hook=_slim)
        else:
            with zipfile.ZipFile(src.path) as zf, zf.open(src.member) as raw:
                obj = json.load(io.TextIOWrapper(raw, encoding="utf-8"), object_hook=_slim)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PipelineError(f"mscoco: cannot read {name} from {src} ({msg})") from None
    if not isinstance(obj, _Top) or not isinstance(obj.get("images"), list) \
            or not isinstance(obj.get("annotations"), list):
        raise PipelineError(f"mscoco: {src} is not a COCO annotation file (no 'images'/'annotations' lists)")
    return obj


def _int_id(value: Any, what: str, where: _JsonSource) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PipelineError(f"mscoco: {where}: {what} must be a non-negative integer, got {value!r}")
    return value


def _typed(items: list, kind: type, what: str, where: _JsonSource) -> list:
    for x in items:
        if not isinstance(x, kind):
            raise PipelineError(f"mscoco: {where}: an entry of {what!r} lacks the COCO fields")
    return items


def _categories(top: _Top, where: _JsonSource) -> list[tuple[int, str]]:
    cats = _typed(top.get("categories") or [], _Cat, "categories", where)
    if not cats:
        raise PipelineError(f"mscoco: {where}: no categories")
    out = sorted((_int_id(c.id, "category id", where), str(c.name)) for c in cats)
    ids = [i for i, _ in out]
    if len(set(ids)) != len(ids):
        raise PipelineError(f"mscoco: {where}: duplicate category ids")
    return out


@dataclass
class _Kept:
    image_id: int
    file_name: str
    labels: list[int]
    caption: str


def _select(split: str, inst_src: _JsonSource, cap_src: _JsonSource, seed: int,
            ref_cats: list[tuple[int, str]] | None) -> tuple[list[tuple[int, str]], list[_Kept], dict[str, int]]:
    """Categories (id, name) by id, kept images (sorted by id) and counts of one split."""
    inst = _load_annotations(inst_src, f"instances_{split}.json")
    cats = _categories(inst, inst_src)
    if ref_cats is not None and cats != ref_cats:
        raise PipelineError(f"mscoco: {inst_src}: categories differ from the other split's")
    cat_index = {cid: k for k, (cid, _) in enumerate(cats)}

    files: dict[int, str] = {}
    for img in _typed(inst["images"], _Img, "images", inst_src):
        iid = _int_id(img.id, "image id", inst_src)
        if iid in files:
            raise PipelineError(f"mscoco: {inst_src}: duplicate image id {iid}")
        fn = img.file_name
        if not isinstance(fn, str) or not _FILE_NAME.fullmatch(fn) or fn in (".", ".."):
            raise PipelineError(f"mscoco: {inst_src}: image {iid}: bad file_name {fn!r}")
        files[iid] = fn
    labels: dict[int, set[int]] = {}
    for a in _typed(inst["annotations"], _Inst, "annotations", inst_src):
        iid = _int_id(a.image_id, "image_id", inst_src)
        cid = a.category_id
        if iid not in files:
            raise PipelineError(f"mscoco: {inst_src}: an annotation refers to unknown image {iid}")
        if not isinstance(cid, int) or isinstance(cid, bool) or cid not in cat_index:
            raise PipelineError(f"mscoco: {inst_src}: an annotation of image {iid} has unknown category {cid!r}")
        labels.setdefault(iid, set()).add(cat_index[cid])
    del inst

    caps_top = _load_annotations(cap_src, f"captions_{split}.json")
    captions: dict[int, list[tuple[int, str]]] = {}
    n_empty = n_foreign = 0
    for c in _typed(caps_top["annotations"], _Cap, "annotations", cap_src):
        iid = _int_id(c.image_id, "image_id", cap_src)
        if iid not in labels:
            n_foreign += iid not in files
            continue
        text = normalize_caption(c.caption)
        n_empty += not text
        captions.setdefault(iid, []).append((_int_id(c.id, "caption id", cap_src), text))
    del caps_top

    kept: list[_Kept] = []
    no_caption: list[int] = []
    for iid in sorted(files):
        if iid not in labels:
            continue
        caption = choose_caption(captions.get(iid, []), seed, iid)
        if caption is None:
            no_caption.append(iid)
            continue
        kept.append(_Kept(iid, files[iid], sorted(labels[iid]), caption))
    counts = {"images": len(files), "without_category": len(files) - len(labels),
              "without_caption": len(no_caption), "kept": len(kept), "empty_captions": n_empty}
    log.info("mscoco %s: %d images, %d without a category, %d without a caption, %d kept",
             split, counts["images"], counts["without_category"], counts["without_caption"], counts["kept"])
    if no_caption:
        shown = ", ".join(map(str, no_caption[:10])) + (", ..." if len(no_caption) > 10 else "")
        log.warning("mscoco %s: dropped %d image(s) with no non-empty caption: %s", split, len(no_caption), shown)
    if n_empty:
        log.info("mscoco %s: ignored %d empty caption(s)", split, n_empty)
    if n_foreign:
        log.warning("mscoco %s: ignored %d caption(s) of images not in %s", split, n_foreign, inst_src)
    return cats, kept, counts


# --------------------------------------------------------------------------------------------
# Locating the inputs


def _annotation_sources(base: Path) -> dict[str, _JsonSource] | None:
    names = [f"{kind}_{split}.json" for split, _ in SPLITS for kind in ("instances", "captions")]
    found: dict[str, _JsonSource] = {}
    for name in names:
        for cand in (base / "annotations" / name, base / name):
            if cand.is_file():
                found[name] = _JsonSource(cand)
                break
    if len(found) == len(names):
        return found
    archive = base / SOURCES["annotations"].filename
    if not archive.is_file():
        return None
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise PipelineError(f"mscoco: {archive}: not a readable zip archive ({e})") from None
    for name in names:
        if name in found:
            continue
        hits = sorted(m for m in members if m == name or m.endswith("/" + name))
        if not hits:
            raise PipelineError(f"mscoco: {archive}: no {name} inside")
        found[name] = _JsonSource(archive, hits[0])
    return found


def _image_source(base: Path, split: str) -> Path | None:
    folder, archive = base / split, base / f"{split}.zip"
    if folder.is_dir():
        return folder
    return archive if archive.is_file() else None


def _locate(base: Path) -> tuple[dict[str, _JsonSource] | None, dict[str, Path | None]]:
    return _annotation_sources(base), {split: _image_source(base, split) for split, _ in SPLITS}


def _download(download_dir: Path, mirror: str | None, progress: bool) -> dict[str, str]:
    """Fetch the three archives; return the SHA-256 each was verified against."""
    verified = {}
    for key, remote in SOURCES.items():
        log.info("mscoco: fetching %s into %s", remote.filename, download_dir)
        fetch(remote, download_dir, mirror=mirror, progress=progress)
        if remote.sha256:
            verified[remote.filename] = remote.sha256
    return verified


# --------------------------------------------------------------------------------------------
# Images


def _hash_in_place(paths: list[Path], progress: bool) -> list[str]:
    from tqdm import tqdm

    return [sha256_file(p) for p in tqdm(paths, desc="hashing images", unit="img", disable=not progress)]


def _read_crc(path: Path, want_sha: bool) -> tuple[int, str | None]:
    import hashlib

    crc, h = 0, hashlib.sha256() if want_sha else None
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
            if h is not None:
                h.update(block)
    return crc, (h.hexdigest() if h is not None else None)


def _extract(archive: Path, split: str, kept: list[_Kept], img_dir: Path, hash_images: bool,
             progress: bool) -> list[str | None]:
    """Extract the kept images of ``archive`` into ``img_dir``; their SHA-256 (or None each)."""
    import hashlib

    from tqdm import tqdm

    img_dir.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as e:
        raise PipelineError(f"mscoco: {archive}: not a readable zip archive ({e})") from None
    with zf:
        by_name: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():  # "train2017/000000000009.jpg"; any folder prefix accepted
            if info.is_dir():
                continue
            base = info.filename.rsplit("/", 1)[-1]
            if base not in by_name or info.filename == f"{split}/{base}":
                by_name[base] = info
        todo = []
        for k in kept:
            info = by_name.get(k.file_name)
            if info is None:
                raise PipelineError(f"mscoco: {archive}: no image {k.file_name} (image id {k.image_id}) inside")
            todo.append(info)
        hashes: dict[str, str | None] = {}
        n_kept = 0
        # Archive order: sequential reads.
        for info in tqdm(sorted(todo, key=lambda i: i.header_offset), desc=f"extracting {split}",
                         unit="img", disable=not progress):
            name = info.filename.rsplit("/", 1)[-1]
            dest = img_dir / name
            if dest.is_file() and dest.stat().st_size == info.file_size:
                crc, sha = _read_crc(dest, hash_images)
                if crc == info.CRC:
                    hashes[name] = sha
                    n_kept += 1
                    continue
            try:
                data = zf.read(info)
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                raise PipelineError(f"mscoco: {archive}: cannot read {info.filename} ({e})") from None
            with atomic_output(dest) as tmp:
                tmp.write_bytes(data)
            hashes[name] = hashlib.sha256(data).hexdigest() if hash_images else None
    if n_kept:
        log.info("mscoco %s: %d image(s) already extracted, kept", split, n_kept)
    wanted = {k.file_name for k in kept}
    for p in img_dir.iterdir():  # images of an earlier run no longer kept; killed temp files
        stale = p.name not in wanted and p.suffix.lower() == ".jpg"
        if p.is_file() and (stale or (p.name.startswith(".") and ".tmp" in p.name)):
            p.unlink()
    return [hashes[k.file_name] for k in kept]


# --------------------------------------------------------------------------------------------
# Public API


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise PipelineError(f"mscoco: seed must be a non-negative integer, got {value!r}")
    return int(value)


def _source_record(path: Path, official: str | None, verified: dict[str, str],
                   hash_file: Callable[[Path], str]) -> dict:
    """Path, size and SHA-256 of one input file; a just-downloaded archive is not hashed again."""
    rec: dict[str, Any] = {"path": str(path), "size": path.stat().st_size}
    rec["sha256"] = verified.get(path.name) or hash_file(path)
    if official is not None:
        rec["official_sha256"] = rec["sha256"] == official
        if not rec["official_sha256"]:
            log.warning("mscoco: %s differs from the official archive (SHA-256 %s)", path, rec["sha256"])
    return rec


def prepare(out_dir: Path, settings: dict, *, progress: bool = True) -> Path:
    """Write the MS-COCO 2017 pairs under ``out_dir``; return ``out_dir/"manifest.jsonl"``.

    ``settings``: ``path`` (the user's COCO folder; without it the three archives are fetched
    into ``download_dir``, default ``out_dir/downloads``, from ``mirror`` when given -- both are
    ignored with ``path``), ``seed``, ``hash_images`` (default true), ``dataset``.
    """
    out_dir = Path(out_dir)
    seed = _seed(settings.get("seed", 0))
    hash_images = settings.get("hash_images", True)
    if not isinstance(hash_images, bool):
        raise PipelineError(f"mscoco: hash_images must be true or false, got {hash_images!r}")
    begin_rewrite(out_dir, "mscoco")

    verified: dict[str, str] = {}
    if settings.get("path"):
        base = Path(settings["path"]).expanduser()
        if not base.is_dir():
            raise PipelineError(f"mscoco: path {base} is not a folder (expected the COCO 2017 zips or "
                                "train2017/, val2017/, annotations/)")
    else:
        base = Path(settings.get("download_dir") or out_dir / "downloads").expanduser()
        verified = _download(base, settings.get("mirror"), progress)
    ann, images = _locate(base)
    if ann is None:
        raise PipelineError(f"mscoco: no annotations under {base} (expected annotations/instances_*2017.json "
                            f"and captions_*2017.json, or {SOURCES['annotations'].filename})")
    for split, src in images.items():
        if src is None:
            raise PipelineError(f"mscoco: no {split} images under {base} (expected {split}/ or {split}.zip)")

    cats: list[tuple[int, str]] | None = None
    pairs: list[Pair] = []
    counts: dict[str, dict[str, int]] = {}
    for split, role in SPLITS:
        cats, kept, counts[split] = _select(split, ann[f"instances_{split}.json"], ann[f"captions_{split}.json"],
                                            seed, cats)
        src = images[split]
        assert src is not None
        if src.is_dir():
            folder = Path(os.path.abspath(src))
            paths = [folder / k.file_name for k in kept]
            for k, p in zip(kept, paths):
                if not p.is_file():
                    raise PipelineError(f"mscoco: missing image {p} (image id {k.image_id})")
            shas = _hash_in_place(paths, progress) if hash_images else [None] * len(kept)
            rels = [str(p) for p in paths]
        else:
            shas = _extract(src, split, kept, out_dir / "images" / split, hash_images, progress)
            rels = [f"images/{split}/{k.file_name}" for k in kept]
        for k, rel, sha in zip(kept, rels, shas):
            pairs.append(Pair(id=f"{split}/{Path(k.file_name).stem}", image=rel, caption=k.caption, tags=[],
                              labels=k.labels, split=role, sha256=sha))
    if len({p.id for p in pairs}) != len(pairs):
        raise PipelineError(f"mscoco: duplicate image file names under {base}")
    assert cats is not None
    cat_ids, classes = [c for c, _ in cats], [n for _, n in cats]
    if not pairs:
        raise PipelineError(f"mscoco: no image under {base} has both a category and a caption")
    if len(classes) != 80:
        log.warning("mscoco: %d categories (MS-COCO 2017 has 80)", len(classes))

    sources: dict[str, Any] = {}
    official = {r.filename: r.sha256 for r in SOURCES.values()}
    files = sorted({s.path for s in ann.values()} | {p for p in images.values() if p is not None and p.is_file()})
    for p in files:
        sources[p.name] = _source_record(p, official.get(p.name), verified, sha256_file)
    for split, p in images.items():
        if p is not None and p.is_dir():
            sources[split] = {"path": str(Path(os.path.abspath(p))), "kind": "folder (images referenced in place)"}
    meta = {
        "dataset": settings.get("dataset", "mscoco"),
        "category_ids": cat_ids,
        "provenance": {"adapter": "pipeline.data.mscoco", "version": ADAPTER_VERSION, "seed": seed,
                       "caption_rule": CAPTION_RULE, "hash_images": hash_images,
                       "counts": counts, "sources": sources},
    }
    n_q = sum(p.split == "query" for p in pairs)
    log.info("mscoco: %d query and %d database pairs, %d classes", n_q, len(pairs) - n_q, len(classes))
    return write_manifest(out_dir, classes, pairs, tag_vocab=None, meta=meta)
