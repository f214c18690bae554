"""MIRFlickr-25K (Huiskes & Lew, "The MIR Flickr retrieval evaluation", ACM MIR 2008) in raw form.

Filtered as the CMIMH paper (Hoang et al., IEEE TNNLS 2023, section IV-A) and the works it follows
(DCMH, Jiang & Li, CVPR 2017) describe it: 25,000 Flickr images with user tags and 24 concept
labels; the text of a pair is its tags restricted to the "common" tags, those used by at least
20 images (1,386 tags); pairs without a common tag are dropped (20,015 pairs are kept).

Sources (press.liacs.nl/mirflickr/mirdownload.html):

* ``mirflickr25k.zip``: ``mirflickr/im{1..25000}.jpg``; ``mirflickr/meta/tags/tags{i}.txt`` (the
  *processed* tags, one per line: lower case, spaces removed), ``meta/tags_raw/`` (the tags as
  typed), and ``mirflickr/doc/common_tags.txt`` (``tag count`` lines).
* ``mirflickr25k_annotations_v080.zip``: ``{concept}.txt`` listing the image numbers annotated
  with each of 24 concepts, plus ``{concept}_r1.txt`` files for 14 of them: the images where the
  concept is "relevant" (clearly visible) -- a subset of ``{concept}.txt``, not a separate label.

Rules (decided here, tested in ``tests/test_data_mirflickr25k.py``):

* Vocabulary: ``doc/common_tags.txt``, which ships with the collection and which every public
  pipeline that reproduces the 20,015 pairs indexes (DCMH's 1,386-d tag vectors): its tags, read
  as the first whitespace-separated field of each line, in the file's order; where the lines
  carry a count (``tag count``), those with a count >= ``min_tag_count`` (20). Without the file
  (or when it cannot give the vocabulary: ``min_tag_count`` below its smallest count, or another
  ``min_tag_count`` than 20 and no counts), the vocabulary is recomputed: the *processed* tags
  (``meta/tags/``) used by at least ``min_tag_count`` images among all 25,000, an image counting
  once however often it repeats a tag, sorted by code point. Which one was used, and why, is
  logged and stored in ``meta.json`` (``provenance.vocabulary``); where the file is present the
  recomputed vocabulary is compared with it (``provenance.common_tags_check``).
* A pair is kept when it has at least one vocabulary tag AND at least one of the 24 labels
  (the paper names only the first rule; with both, the collection gives 20,015 pairs).
* ``labels``: indices into :data:`CONCEPTS` (the 24 concept names, sorted); the ``_r1`` files
  are ignored. ``tags``: the pair's vocabulary tags in their file order, each once; ``caption``:
  the same joined by spaces.
* Ids are the official image names (``im123``), pairs in image-number order; ``split`` is null
  (the seeded protocol of :mod:`pipeline.data.splits` applies).
* Kept images are always copied into ``out_dir/images/`` (never referenced in place), so the
  prepared folder is self-contained and a user's own copy is never touched; each Pair records
  the image's SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.data.download import Remote, fetch, file_digests
from pipeline.data.manifest import Pair, begin_rewrite, write_manifest
from pipeline.errors import PipelineError
from pipeline.io import atomic_output, sha256_file

log = logging.getLogger(__name__)

ADAPTER_VERSION = "mirflickr25k-1"
DEFAULT_MIN_TAG_COUNT = 20

# URLs: the collection's download page, press.liacs.nl/mirflickr/mirdownload.html (the v3b
# release). Checksums and sizes, as found (none is published as SHA-256):
# * mirflickr25k.zip: MD5 A23D0A8564EE84CDA5622A6C2F947785 is the official MD5 quoted from the
#   download page by several public scripts (e.g. a MIRFLICKR preparation README: "图片官方 MD5");
#   size 3,069,184,257 bytes, given with that MD5 by two independent public download scripts.
# * mirflickr25k_annotations_v080.zip: size 207,220 bytes and MD5 aa0138c79892b1b670184d142380948f
#   from a public task-staging script ("checked against the size and MD5 of the copy the agents
#   received") -- measured on a downloaded copy, not published by the collection's authors. So
#   checksum_official=False: a download of that size is used whatever its MD5, which is logged
#   (and recorded in meta.json); one of another size is refused.
SOURCES: dict[str, Remote] = {
    "images": Remote(url="https://press.liacs.nl/mirflickr/mirflickr25k.v3b/mirflickr25k.zip",
                     filename="mirflickr25k.zip", md5="a23d0a8564ee84cda5622a6c2f947785",
                     size=3_069_184_257),
    "annotations": Remote(
        url="https://press.liacs.nl/mirflickr/mirflickr25k.v3b/mirflickr25k_annotations_v080.zip",
        filename="mirflickr25k_annotations_v080.zip", md5="aa0138c79892b1b670184d142380948f",
        size=207_220, checksum_official=False),
}

# The 24 concepts of the v080 annotations, sorted (label index = position).
CONCEPTS: list[str] = sorted([
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor",
    "lake", "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky",
    "structures", "sunset", "transport", "tree", "water",
])

_IMAGE = re.compile(r"(?:^|/)im(\d+)\.jpg$")
_TAGS = re.compile(r"(?:^|/)meta/tags/tags(\d+)\.txt$")
_COMMON = re.compile(r"(?:^|/)doc/common_tags\.txt$")
_CONCEPT = re.compile(r"(?:^|/)([A-Za-z_]+)\.txt$")


# --------------------------------------------------------------------------------------------
# Reading the collection from its archives or from extracted folders


@dataclass
class _Part:
    """Files of one archive or extracted folder: what was found, and how to read it."""

    read: Callable[[str], bytes]
    describe: str
    images: dict[int, str] = field(default_factory=dict)
    tags: dict[int, str] = field(default_factory=dict)
    concepts: dict[str, str] = field(default_factory=dict)
    common_tags: str | None = None
    close: Callable[[], None] = lambda: None


def _index(names, where: str) -> dict:
    """Map member names ('/'-separated) to images, tag files, concept files, common tags."""
    found: dict = {"images": {}, "tags": {}, "concepts": {}, "common_tags": None}
    concept_set = set(CONCEPTS)
    for name in names:
        for key, rx in (("images", _IMAGE), ("tags", _TAGS)):
            m = rx.search(name)
            if m:
                n = int(m.group(1))
                if n in found[key]:
                    raise PipelineError(f"{where}: two files for image {n}: {found[key][n]} and {name}")
                found[key][n] = name
        m = _CONCEPT.search(name)
        if m and m.group(1) in concept_set:
            if m.group(1) in found["concepts"]:
                raise PipelineError(f"{where}: two annotation files for {m.group(1)!r}: "
                                    f"{found['concepts'][m.group(1)]} and {name}")
            found["concepts"][m.group(1)] = name
        if _COMMON.search(name):
            found["common_tags"] = name
    return found


def _open_zip(path: Path) -> _Part:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise PipelineError(f"{path}: not a readable zip archive ({e})") from None
    names = [i.filename for i in zf.infolist() if not i.is_dir() and "__MACOSX/" not in i.filename]

    def read(name: str) -> bytes:
        try:
            return zf.read(name)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise PipelineError(f"{path}: cannot read {name} ({e})") from None

    return _Part(read=read, describe=str(path), close=zf.close, **_index(names, str(path)))


def _open_folder(root: Path, names: list[str]) -> _Part:
    def read(name: str) -> bytes:
        try:
            return (root / name).read_bytes()
        except OSError as e:
            raise PipelineError(f"cannot read {root / name} ({e.strerror or e})") from None

    return _Part(read=read, describe=str(root), **_index(names, str(root)))


def _subdirs(path: Path, depth: int) -> list[Path]:
    """``path`` and its folders down to ``depth`` levels, in a fixed order."""
    def children(p: Path) -> list[Path]:
        try:
            return [d for d in p.iterdir() if d.is_dir()]
        except OSError:  # unreadable folder: not ours to search
            return []

    out, level = [path], [path]
    for _ in range(depth):
        level = sorted(d for p in level for d in children(p))
        out += level
    return out


def _find_image_folder(path: Path) -> _Part | None:
    """An extracted ``mirflickr/`` folder (images + ``meta/tags/``) at or below ``path``."""
    for d in _subdirs(path, 2):
        if (d / "meta" / "tags").is_dir():
            names = [p.name for p in d.iterdir() if _IMAGE.search(p.name) and p.is_file()]
            names += [f"meta/tags/{p.name}" for p in (d / "meta" / "tags").iterdir()]
            if (d / "doc" / "common_tags.txt").is_file():
                names.append("doc/common_tags.txt")
            return _open_folder(d, names)
    return None


def _find_annotation_folder(path: Path) -> _Part | None:
    """A folder holding the 24 ``{concept}.txt`` files at or below ``path``."""
    for d in _subdirs(path, 2):
        if all((d / f"{c}.txt").is_file() for c in CONCEPTS):
            return _open_folder(d, [f"{c}.txt" for c in CONCEPTS])
    return None


def _checked_archive(path: Path, remote: Remote, origin: str) -> dict:
    """Checksums of an archive for provenance; a user's copy that differs is used with a warning.

    ``matches_published``: the size and the official checksums agree (None: nothing to compare).
    Where the remote's checksums are unofficial only the size counts, and whether the MD5 agrees
    with the unofficial one is recorded (``md5_matches_unofficial``) and logged.
    """
    digests = file_digests(path, ("sha256", "md5"))
    size = path.stat().st_size
    official = remote.checksum_official
    checks = [remote.size is None or size == remote.size]
    if official:
        checks += [not remote.sha256 or digests["sha256"] == remote.sha256.lower(),
                   not remote.md5 or digests["md5"] == remote.md5.lower()]
    matches: bool | None = all(checks)
    if not (remote.size is not None or (official and (remote.sha256 or remote.md5))):
        matches = None  # nothing published to compare with
    elif not matches:
        log.warning("%s: size/checksum differ from the published %s (size %s, md5 %s%s); using it "
                    "anyway, its checksums are recorded in meta.json", path, remote.filename,
                    remote.size, remote.md5, "" if official else ", unofficial")
    out = {"file": remote.filename, "origin": origin, "size": size, "sha256": digests["sha256"],
           "md5": digests["md5"], "checksum": "official" if official else "unofficial",
           "matches_published": matches}
    if not official and remote.md5:
        out["md5_matches_unofficial"] = digests["md5"] == remote.md5.lower()
        log.info("%s: md5 %s (%s the unofficial %s), sha256 %s", remote.filename, digests["md5"],
                 "matches" if out["md5_matches_unofficial"] else "differs from", remote.md5.lower(),
                 digests["sha256"])
    return out


def _open_sources(settings: dict, out_dir: Path, progress: bool) -> tuple[_Part, _Part, dict]:
    """The images+tags part and the annotations part, from ``path`` or downloaded; provenance."""
    prov: dict = {}
    path = settings.get("path")
    if path:
        path = Path(path).expanduser()
        if not path.is_dir():
            raise PipelineError(f"mirflickr25k: path {path} is not a folder (it should hold "
                                f"{SOURCES['images'].filename} and "
                                f"{SOURCES['annotations'].filename}, or their extracted contents)")
        parts = {}
        for key, finder in (("images", _find_image_folder), ("annotations", _find_annotation_folder)):
            archive = path / SOURCES[key].filename
            if archive.is_file():
                prov[key] = _checked_archive(archive, SOURCES[key], "path")
                parts[key] = _open_zip(archive)
                continue
            part = finder(path)
            if part is None:
                what = ("an extracted mirflickr/ folder with meta/tags/" if key == "images"
                        else "a folder with the 24 concept files (animals.txt, ...)")
                raise PipelineError(f"mirflickr25k: found neither {SOURCES[key].filename} nor "
                                    f"{what} under {path}")
            prov[key] = {"folder": str(part.describe), "origin": "path"}
            parts[key] = part
        return parts["images"], parts["annotations"], prov

    dl = Path(settings.get("download_dir") or out_dir / "downloads").expanduser()
    mirror = settings.get("mirror")
    zips = {}
    for key in ("images", "annotations"):
        archive = fetch(SOURCES[key], dl, mirror=mirror, progress=progress)
        prov[key] = _checked_archive(archive, SOURCES[key], "download")
        zips[key] = _open_zip(archive)
    return zips["images"], zips["annotations"], prov


# --------------------------------------------------------------------------------------------
# The rules


def _decode(data: bytes) -> str:
    """UTF-8, else Latin-1 (lossless for any bytes), so no tag is silently merged with another."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_tags(text: str) -> list[str]:
    """A tags file: one processed tag per line (whitespace-separated), each kept once, in order."""
    return list(dict.fromkeys(text.split()))


def tag_vocabulary(tags: dict[int, list[str]], min_tag_count: int) -> tuple[list[str], Counter]:
    """Tags used by at least ``min_tag_count`` images (sorted), and every tag's image count."""
    counts = Counter(t for ts in tags.values() for t in set(ts))
    return sorted(t for t, c in counts.items() if c >= min_tag_count), counts


def parse_concept_file(text: str, where: str) -> list[int]:
    """An annotation file: one image number per line."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if not s.isdigit():
            raise PipelineError(f"{where}:{lineno}: not an image number: {s!r}")
        out.append(int(s))
    return out


def parse_common_tags(text: str) -> tuple[list[str], dict[str, int] | None]:
    """``doc/common_tags.txt``: its tags (first field of each non-blank line, each once, in file
    order) and their counts (second field), or None where not every line has an integer count."""
    tags: dict[str, int | None] = {}
    for line in text.splitlines():
        f = line.split()
        if f and f[0] not in tags:
            tags[f[0]] = int(f[1]) if len(f) >= 2 and f[1].isdigit() else None
    if tags and all(c is not None for c in tags.values()):
        return list(tags), dict(tags)  # type: ignore[arg-type]
    return list(tags), None


def choose_vocabulary(file_tags: list[str] | None, file_counts: dict[str, int] | None,
                      min_tag_count: int) -> tuple[list[str] | None, str | None]:
    """The vocabulary doc/common_tags.txt gives for ``min_tag_count`` (None: it cannot give one),
    and why not."""
    if file_tags is None:
        return None, None
    if not file_tags:
        return None, "doc/common_tags.txt is empty"
    if file_counts is None:
        if min_tag_count != DEFAULT_MIN_TAG_COUNT:
            return None, f"doc/common_tags.txt has no counts to apply min_tag_count {min_tag_count} to"
        return list(file_tags), None
    least = min(file_counts.values())
    if min_tag_count < least:
        return None, (f"doc/common_tags.txt lists only tags used by >= {least} images, "
                      f"min_tag_count is {min_tag_count}")
    return [t for t in file_tags if file_counts[t] >= min_tag_count], None


def _common_tags_check(file_vocab: list[str], file_counts: dict[str, int] | None,
                       ours: list[str], counts: Counter) -> dict:
    """Compare the recomputed vocabulary (``ours``) with the file's."""
    ref, mine = set(file_vocab), set(ours)
    count_diff = (None if file_counts is None
                  else sum(1 for t in ref & mine if counts[t] != file_counts[t]))
    return {"checked": True, "file_vocab_size": len(ref), "agree": ref == mine,
            "only_in_ours": len(mine - ref), "only_in_file": len(ref - mine),
            "count_differences": count_diff}


# --------------------------------------------------------------------------------------------
# Public API


def _settings(settings: dict) -> int:
    m = settings.get("min_tag_count", DEFAULT_MIN_TAG_COUNT)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise PipelineError(f"mirflickr25k: min_tag_count must be an integer >= 1, got {m!r}")
    for key in ("path", "download_dir", "mirror"):
        v = settings.get(key)
        if v is not None and not isinstance(v, (str, Path)):
            raise PipelineError(f"mirflickr25k: {key} must be a path string, got {v!r}")
    return m


def prepare(out_dir: Path, settings: dict, *, progress: bool = True) -> Path:
    """Write MIRFlickr-25K under ``out_dir`` in the raw form; return ``out_dir/"manifest.jsonl"``.

    ``settings``: ``path`` (a folder holding the two official zip archives or their extracted
    contents, searched two levels deep, an archive preferred to a folder; a copy whose checksums
    differ from the published ones is used with a warning; without ``path`` the archives are
    downloaded, resumably and verified), ``download_dir`` (default ``out_dir/"downloads"``),
    ``mirror`` (a base URL or folder replacing the official host), ``min_tag_count`` (20:
    applied to doc/common_tags.txt's counts, or to a recount without that file; see the module
    docstring).
    ``seed`` is accepted and unused: nothing here is random. A rerun rebuilds the same bytes.
    """
    from tqdm import tqdm

    min_tag_count = _settings(settings)
    out_dir = Path(out_dir)
    img_dir = begin_rewrite(out_dir, "mirflickr25k", "images")

    images, annotations, sources = _open_sources(settings, out_dir, progress)
    try:
        numbers = sorted(images.images)
        if not numbers:
            raise PipelineError(f"mirflickr25k: no images im*.jpg in {images.describe}")
        missing = [c for c in CONCEPTS if c not in annotations.concepts]
        if missing:
            raise PipelineError(f"mirflickr25k: {annotations.describe} lacks the annotation "
                                f"file(s) {', '.join(c + '.txt' for c in missing)}")

        tags: dict[int, list[str]] = {}
        n_no_tag_file = 0
        for n in tqdm(numbers, desc="mirflickr25k tags", unit="file", disable=not progress):
            if n in images.tags:
                tags[n] = parse_tags(_decode(images.read(images.tags[n])))
            else:
                tags[n] = []
                n_no_tag_file += 1
        if n_no_tag_file:
            log.warning("mirflickr25k: %d image(s) have no tags file (counted as untagged)",
                        n_no_tag_file)
        recomputed, counts = tag_vocabulary(tags, min_tag_count)
        file_tags = file_counts = None
        if images.common_tags is not None:
            file_tags, file_counts = parse_common_tags(_decode(images.read(images.common_tags)))
        vocab, note = choose_vocabulary(file_tags, file_counts, min_tag_count)
        common_check = None
        if vocab is not None:
            vocab_prov = {"source": "doc/common_tags.txt", "file": images.common_tags,
                          "order": "file order", "note": None}
            log.info("mirflickr25k: vocabulary: %d tags from doc/common_tags.txt (%s, file order)",
                     len(vocab), f"count >= {min_tag_count}" if file_counts else "all its tags")
            common_check = _common_tags_check(vocab, file_counts, recomputed, counts)
            if not common_check["agree"] or common_check["count_differences"]:
                diff = common_check["count_differences"]
                log.info("mirflickr25k: recomputing it from meta/tags would give %d tags (%d not in "
                         "the file, %d only in it%s); the file's list is used", len(recomputed),
                         common_check["only_in_ours"], common_check["only_in_file"],
                         "" if diff is None else f"; {diff} of the file's counts differ")
        else:
            vocab = recomputed
            if note is None:
                note = f"no doc/common_tags.txt in {images.describe}"
            vocab_prov = {"source": "recomputed", "file": images.common_tags, "order": "code point",
                          "note": note}
            log.info("mirflickr25k: vocabulary recomputed: %d processed tags used by >= %d images "
                     "(%s)", len(vocab), min_tag_count, note)
        vocab_set = set(vocab)

        labels: dict[int, set[int]] = {n: set() for n in numbers}
        unknown = 0
        for c, concept in enumerate(CONCEPTS):
            name = annotations.concepts[concept]
            for n in parse_concept_file(_decode(annotations.read(name)),
                                        f"{annotations.describe}/{name}"):
                if n in labels:
                    labels[n].add(c)
                else:
                    unknown += 1
        if unknown:
            log.warning("mirflickr25k: %d annotation entries name images that are not in %s "
                        "(ignored)", unknown, images.describe)

        kept: list[int] = []
        n_no_vocab = n_no_label = n_neither = 0
        for n in numbers:
            has_tag = any(t in vocab_set for t in tags[n])
            has_label = bool(labels[n])
            n_no_vocab += not has_tag
            n_no_label += not has_label
            n_neither += not (has_tag or has_label)
            if has_tag and has_label:
                kept.append(n)
        counts_out = {"pairs_total": len(numbers), "no_vocab_tag": n_no_vocab,
                      "no_label": n_no_label, "no_vocab_tag_and_no_label": n_neither,
                      "kept": len(kept), "vocab_size": len(vocab)}
        log.info("mirflickr25k: %d pairs, %d without a vocabulary tag, %d without a label, "
                 "%d kept; %d vocabulary tags", len(numbers), n_no_vocab, n_no_label,
                 len(kept), len(vocab))
        if not kept:
            raise PipelineError(f"mirflickr25k: no pair has both a vocabulary tag ({len(vocab)} tags, "
                                f"{vocab_prov['source']}) and a label")

        pairs: list[Pair] = []
        written: set[str] = set()
        for n in tqdm(kept, desc="mirflickr25k images", unit="img", disable=not progress):
            data = images.read(images.images[n])
            sha = hashlib.sha256(data).hexdigest()
            name = f"im{n}.jpg"
            dest = img_dir / name
            if not (dest.is_file() and dest.stat().st_size == len(data) and sha256_file(dest) == sha):
                with atomic_output(dest) as tmp:
                    tmp.write_bytes(data)
            written.add(name)
            vtags = [t for t in tags[n] if t in vocab_set]
            pairs.append(Pair(id=f"im{n}", image=f"images/{name}", caption=" ".join(vtags),
                              tags=vtags, labels=sorted(labels[n]), split=None, sha256=sha))
    finally:
        images.close()
        annotations.close()

    for p in img_dir.iterdir():  # images of an earlier run that are no longer kept; killed temps
        if (re.fullmatch(r"im\d+\.jpg", p.name) and p.name not in written) or \
                re.fullmatch(r"\.im\d+\.jpg\..*\.tmp\.jpg", p.name):
            p.unlink()

    meta = {
        "dataset": "mirflickr25k",
        "provenance": {
            "adapter": "pipeline.data.mirflickr25k", "version": ADAPTER_VERSION,
            "min_tag_count": min_tag_count, "counts": counts_out, "sources": sources,
            "vocabulary": vocab_prov, "common_tags_check": common_check,
            "rules": "vocab = doc/common_tags.txt (tags with count >= min_tag_count, file order), "
                     "else the processed tags (meta/tags) used by >= min_tag_count images; keep "
                     "pairs with >= 1 vocab tag and >= 1 of the 24 labels (_r1 files ignored)",
        },
    }
    return write_manifest(out_dir, CONCEPTS, pairs, tag_vocab=vocab, meta=meta)
