"""NUS-WIDE in the raw form of :mod:`pipeline.data.manifest`, with the CMIMH paper's protocol.

NUS-WIDE (Chua et al., "NUS-WIDE: A Real-World Web Image Database from National University of
Singapore", CIVR 2009; https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html)
is 269,648 Flickr images with their tags and human ground truth for 81 concepts. CMIMH (Hoang et
al., TNNLS 2023, section IV-A; ``../shared/paper/method.md``, "Protocol") keeps the pairs that
have at least one of the 10 most frequent concepts (186,577 on the real data), represents the
text by the official 1,000-d tag vector and labels a pair with those 10 concepts.

Inputs, all in the official formats, found by file name (case-insensitive) in ``path`` and in
``download_dir``, either extracted or inside zips: the current bundle ``NUS-WIDE.zip``
(``Groundtruth/`` and ``ConceptsList/``, possibly under a top folder ``NUS-WIDE/``) with
``NUS_WID_Tags.zip``, or the separate ``ImageList.zip``, ``ConceptsList.zip`` and
``Groundtruth.zip``. What is missing is downloaded from :data:`SOURCES` (the university's site),
else from :data:`ALTERNATIVES`; when that fails too, one line names the missing file, the archive
that holds it and its URL.

* The image list, one image per line, a Windows path relative to the authors' ``Flickr/``
  folder (``actor\\0001_2124494179.jpg``); its line order is the row order of every other file.
  It is ``ImageList/Imagelist.txt`` (in ``ImageList.zip``). The current bundle lacks it, so
  without it the first column of ``NUS-WIDE-urls.txt``, which lists the same images in the same
  order, gives the image list (a file of another row count than the label files is refused:
  it cannot give the row order). With neither, ``ImageList.zip`` is downloaded.
* ``ConceptsList/Concepts81.txt`` (81 names) and ``Groundtruth/AllLabels/Labels_{concept}.txt``
  (one 0/1 per line, in image-list order).
* ``NUS_WID_Tags/TagList1k.txt`` (the 1,000 tags) and ``NUS_WID_Tags/AllTags1k.txt`` (one row of
  1,000 whitespace-separated 0/1 values per image, columns in TagList1k order).
* ``NUS-WIDE-urls.txt`` (for the image list when Imagelist.txt is absent, and for
  ``download_images``): a header line (and ``%`` comment lines), then
  ``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg  photo_id  url_Large  url_Middle  url_Small
  url_Original`` (``null`` where absent).

The rules, each recorded in ``meta.json["provenance"]``:

* Concepts: the ``n_concepts`` (10) concepts with the most positives over all rows of the label
  files, ties broken by name (alphabetical). ``classes`` lists them by decreasing frequency. On
  the real data these are sky, clouds, person, water, animal, grass, buildings, window, plants,
  lake -- the list used throughout the literature (e.g. the "top 10 labels" of the widely copied
  NUS-WIDE loaders found with the project's code search); the adapter logs the list and its counts,
  and warns when the full data set gives another one.
* Keep a pair when any of these concepts is 1 (the paper: 186,577 pairs).
* Tags: the TagList1k entries whose AllTags1k value is 1, in TagList1k order; ``tag_vocab`` is
  all of TagList1k in file order, so the tag vector is the official 1,000-d one. The caption is
  the tags joined by spaces. A pair with no tag is kept (the paper does not drop them), and
  counted.
* Images are not downloadable from NUS (on request only) and many Flickr URLs are dead, so they
  come from ``images``, a folder holding the authors' ``Flickr/`` tree (or that tree itself), or
  the files themselves in one folder (``images/0001_2124494179.jpg``; any depth): an image not
  at ``<concept>/<file>`` is looked up by its file name, in an index of the folder built once. A
  file name found twice there is ambiguous: its pair counts as missing (both logged, and counted
  in ``provenance.images_by_name``). A pair without its image file is dropped and counted
  (``missing_image: drop``) or stops the run (``missing_image: error``). Corrupt files are left
  to the image extraction (``on_bad_image``).
* ``images_mode``: ``symlink`` (default) makes ``out_dir/images/<concept>/<file>`` a symbolic
  link to the image (186k copies would waste disk; the manifest stays independent of where the
  image folder is); ``copy`` copies the files; ``absolute`` writes the image's absolute path into
  the manifest (``Manifest.image_path`` joins the root with it, and pathlib keeps an absolute
  right-hand side as it is) and creates nothing.
* ``hash_images`` (default true) records each image's SHA-256 in the manifest; it reads every
  image once (tens of GB on the full set), so it can be switched off.
* ``download_images`` (default false) tries each kept pair's Flickr URL from NUS-WIDE-urls.txt
  once (the first of url_Middle, url_Large, url_Small, url_Original that is not ``null``) into
  ``download_dir/Flickr/``, skipping images already present; Flickr answers removed photos with a
  PNG/GIF placeholder, so a download that is not a JPEG is discarded and counted as failed.

Pair ids are the zero-based row in the image list (``"000123"``), stable across runs and subsets.
Nothing is random: the same inputs and settings give a byte-identical ``manifest.jsonl`` (the
``seed`` setting is accepted and unused; splits are drawn later by :mod:`pipeline.data.splits`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

import numpy as np

from pipeline.data.download import Remote, fetch, resolve_url
from pipeline.data.manifest import Pair, begin_rewrite, write_manifest
from pipeline.errors import PipelineError
from pipeline.io import atomic_output, sha256_file

log = logging.getLogger(__name__)

ADAPTER_VERSION = "nuswide-1"

# Where the metadata comes from. The NUS-WIDE page (PAGE) used to link its archives to
# http://dl.nextcenter.org/public/nuswide/, a host that is dead (its links are reported invalid
# since 2021). The page now serves them from the university's own site, BASE_URL: ImageList.zip,
# ConceptsList.zip, Groundtruth.zip, NUS_WID_Tags.zip and NUS-WIDE-urls.rar under that folder are
# the URLs of several independent public NUS-WIDE download scripts and data READMEs found with the
# project's code search (curl/wget/urllib lists of exactly these five names).
# The current bundle, NUS-WIDE.zip, holds Groundtruth/ and ConceptsList/ (no ImageList): it is
# what the NExT++ lab's "NUS-WIDE (Official Repo)" README on GitHub (NExTplusplus/NUS-WIDE)
# describes, distributed with NUS_WID_Tags.zip from the Hugging Face data set it links to
# (Lxyhaha/NUS-WIDE); the project's issue reports NUS-WIDE.zip under BASE_URL as well, which no
# public script found confirms. These are ALTERNATIVES, tried in order when an archive cannot be
# downloaded from BASE_URL (with ``mirror``, each name is tried once on the mirror).
# Neither the page nor any source found gives sizes or checksums, so they are None.
PAGE = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html"
BASE_URL = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/"
HF_URL = "https://huggingface.co/datasets/Lxyhaha/NUS-WIDE/resolve/main/"
SOURCES: dict[str, Remote] = {
    "imagelist": Remote(url=BASE_URL + "ImageList.zip", filename="ImageList.zip"),
    "concepts": Remote(url=BASE_URL + "ConceptsList.zip", filename="ConceptsList.zip"),
    "groundtruth": Remote(url=BASE_URL + "Groundtruth.zip", filename="Groundtruth.zip"),
    "tags": Remote(url=BASE_URL + "NUS_WID_Tags.zip", filename="NUS_WID_Tags.zip"),
    # RAR: Python's standard library cannot read it; extract NUS-WIDE-urls.txt by hand.
    "urls": Remote(url=BASE_URL + "NUS-WIDE-urls.rar", filename="NUS-WIDE-urls.rar"),
    # The official "Low-Level Features" archive of the NUS-WIDE page (six feature types for all
    # 269,648 images, in image-list order); the handcrafted protocol (the paper's Table VIII) reads
    # its 500-d bag of SIFT visual words, Low_Level_Features/BoW_int.dat. Its name under BASE_URL
    # follows the page's other archives (the file name public NUS-WIDE loaders use: Low_Level_Features/
    # BoW_int.dat); no source gives its size or checksum (None). RAR as well: extract BoW_int.dat
    # (or re-zip the folder) into ``path`` or ``download_dir``.
    "lowlevel": Remote(url=BASE_URL + "Low_Level_Features.rar", filename="Low_Level_Features.rar"),
}
_BUNDLE = (Remote(url=BASE_URL + "NUS-WIDE.zip", filename="NUS-WIDE.zip"),
           Remote(url=HF_URL + "NUS-WIDE.zip", filename="NUS-WIDE.zip"))
ALTERNATIVES: dict[str, tuple[Remote, ...]] = {
    "concepts": _BUNDLE,
    "groundtruth": _BUNDLE,
    "tags": (Remote(url=HF_URL + "NUS_WID_Tags.zip", filename="NUS_WID_Tags.zip"),),
}
# The archives that hold each source's files, for the messages.
HOLDERS = {
    "imagelist": "ImageList.zip",
    "concepts": "ConceptsList.zip or NUS-WIDE.zip",
    "groundtruth": "Groundtruth.zip or NUS-WIDE.zip",
    "tags": "NUS_WID_Tags.zip",
    "urls": "NUS-WIDE-urls.rar",
    "lowlevel": "Low_Level_Features.rar",
}
N_IMAGES = 269_648        # rows of every official file (NUS-WIDE page, CIVR 2009 paper)
PAPER_N_PAIRS = 186_577   # pairs with >= 1 of the top-10 concepts (CMIMH paper, section IV-A)
KNOWN_TOP10 = ("sky", "clouds", "person", "water", "animal",
               "grass", "buildings", "window", "plants", "lake")

MISSING_POLICIES = ("drop", "error")
IMAGE_MODES = ("symlink", "copy", "absolute")
_CHUNK = 4 << 20          # bytes of AllTags1k parsed at a time (bounded memory)
_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 11, 12, 13, 32]] = True
_JPEG_MAGIC = b"\xff\xd8\xff"


# --------------------------------------------------------------------------------------------
# Finding the official files, extracted or inside zips


@dataclass(frozen=True)
class _Entry:
    """One official file: a file on disk, or a member of a zip archive."""

    location: Path
    member: str | None = None

    @property
    def parent_name(self) -> str:
        parent = PurePosixPath(self.member).parent.name if self.member else self.location.parent.name
        return parent.lower()

    def __str__(self) -> str:
        return f"{self.location}:{self.member}" if self.member else str(self.location)

    @property
    def label(self) -> str:
        """A machine-independent name for provenance."""
        return f"{self.location.name}:{self.member}" if self.member else self.location.name

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        try:
            if self.member is None:
                with open(self.location, "rb") as f:
                    yield f
            else:
                with zipfile.ZipFile(self.location) as z, z.open(self.member) as f:
                    yield f
        except (OSError, zipfile.BadZipFile) as e:
            raise PipelineError(f"nuswide: cannot read {self}: {e}") from None


def _index(folders: list[Path]) -> dict[str, list[_Entry]]:
    """Lower-case base name -> entries: files on disk first, then zip members (each sorted).

    Folders named ``Flickr`` (the image tree) and ``__MACOSX`` are not searched.
    """
    files: list[_Entry] = []
    members: list[_Entry] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames
                                 if d.lower() not in ("flickr", "__macosx") and not d.startswith("."))
            for name in sorted(filenames):
                p = Path(dirpath) / name
                low = name.lower()
                if low.endswith((".txt", ".dat")):
                    files.append(_Entry(p))
                elif low.endswith(".zip"):
                    try:
                        with zipfile.ZipFile(p) as z:
                            names = sorted(z.namelist())
                    except (OSError, zipfile.BadZipFile) as e:  # an unrelated or broken zip
                        log.warning("nuswide: skipping %s: not a readable zip archive (%s)", p, e)
                        continue
                    members += [_Entry(p, m) for m in names
                                if m.lower().endswith((".txt", ".dat")) and "__macosx" not in m.lower()]
    out: dict[str, list[_Entry]] = {}
    for e in files + members:
        name = PurePosixPath(e.member).name if e.member else e.location.name
        out.setdefault(name.lower(), []).append(e)
    return out


def _pick(index: dict[str, list[_Entry]], name: str, parent: str | None = None) -> _Entry | None:
    """The first entry named ``name``, preferring one inside a folder named ``parent``."""
    entries = index.get(name.lower(), [])
    if parent is not None:
        preferred = [e for e in entries if e.parent_name == parent.lower()]
        entries = preferred or entries
    return entries[0] if entries else None


def _labels_name(concept: str) -> str:
    return f"Labels_{concept}.txt"


def _origin(key: str) -> str:
    """Where a source's files come from, for a message."""
    return f"it is in {HOLDERS[key]}, from {SOURCES[key].url} (the NUS-WIDE page: {PAGE})"


class _Files:
    """Locates the official files in ``folders``, downloading missing archives on demand."""

    def __init__(self, folders: list[Path], download_dir: Path, mirror: str | None, progress: bool):
        self.folders = folders
        self.download_dir = download_dir
        self.mirror = mirror
        self.progress = progress
        self.fetched: dict[str, str] = {}  # source key -> file name
        self.tried: set[str] = set()       # source keys whose download was attempted
        self.index = _index(self.folders)

    def find(self, name: str, parent: str | None = None) -> _Entry | None:
        return _pick(self.index, name, parent)

    def _fetch(self, key: str, name: str, hint: str = "") -> None:
        """Download the archive of ``key`` (or an alternative); one line naming ``name`` if none comes."""
        self.tried.add(key)
        errors: list[str] = []
        urls: set[str] = set()
        for remote in (SOURCES[key],) + ALTERNATIVES.get(key, ()):
            url = resolve_url(remote, self.mirror)
            if url in urls:  # a mirror serves each file name once
                continue
            urls.add(url)
            log.info("nuswide: %s is not in %s: downloading %s into %s", name, self._where(), url,
                     self.download_dir)
            try:
                fetch(remote, self.download_dir, mirror=self.mirror, progress=self.progress)
            except PipelineError as e:
                log.warning("nuswide: %s", e)
                errors.append(str(e))
                continue
            self.fetched[key] = remote.filename
            self.index = _index(self.folders)
            return
        names = list(dict.fromkeys(r.filename for r in (SOURCES[key],) + ALTERNATIVES.get(key, ())))
        what = (f"{names[0]} could not be downloaded" if len(names) == 1
                else f"neither {' nor '.join(names)} could be downloaded")
        raise PipelineError(f"nuswide: {name} is not in {self._where()}, and {what} "
                            f"({'; '.join(errors)}); {_origin(key)}{hint}")

    def get(self, name: str, key: str, parent: str | None = None, hint: str = "") -> _Entry:
        entry = self.find(name, parent)
        if entry is None and key not in self.tried:
            self._fetch(key, name, hint)
            entry = self.find(name, parent)
        if entry is None:
            got = f", nor in the downloaded {self.fetched[key]}" if key in self.fetched else ""
            raise PipelineError(f"nuswide: {name} is not in {self._where()}{got}; {_origin(key)}{hint}")
        return entry

    def _where(self) -> str:
        return " or ".join(str(f) for f in self.folders)


# --------------------------------------------------------------------------------------------
# Parsing


def _read_text_lines(entry: _Entry) -> tuple[list[str], str]:
    """Stripped lines (trailing blank lines dropped; a blank line inside is an error), sha256."""
    with entry.open() as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    lines = [s.strip() for s in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for i, s in enumerate(lines):
        if not s:
            raise PipelineError(f"nuswide: {entry}:{i + 1}: blank line (rows would shift)")
    if not lines:
        raise PipelineError(f"nuswide: {entry} is empty")
    return lines, digest


def _binary_block(block: bytes, width: int, where: str, first_line: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse whole lines of single-character 0/1 values separated by whitespace.

    Returns the values of the non-blank lines (k x width, uint8) and, per line, whether it is
    blank. Vectorised over the bytes: the 540 MB AllTags1k.txt parses in seconds.
    """
    buf = np.frombuffer(block, dtype=np.uint8)
    if buf.size == 0:
        return np.zeros((0, width), np.uint8), np.zeros(0, bool)
    nl = buf == 10
    line_of = np.cumsum(nl, dtype=np.int32) - nl  # the line each byte belongs to
    n_lines = int(nl.sum()) + (0 if nl[-1] else 1)
    tok = ~_WS[buf]

    def fail(i: int, what: str):
        raise PipelineError(f"nuswide: {where}:{first_line + int(line_of[i]) + 1}: {what}")

    bad = tok & (buf != 48) & (buf != 49)
    if bad.any():
        i = int(np.argmax(bad))
        fail(i, f"expected 0/1 values, found {bytes(block[i:i + 12]).split()[0].decode('latin-1')!r}")
    joined = tok[1:] & tok[:-1]
    if joined.any():
        fail(int(np.argmax(joined)), "expected single 0/1 values separated by whitespace")
    counts = np.bincount(line_of[tok], minlength=n_lines)
    blank = counts == 0
    wrong = ~blank & (counts != width)
    if wrong.any():
        j = int(np.argmax(wrong))
        raise PipelineError(f"nuswide: {where}:{first_line + j + 1}: expected {width} values, "
                            f"got {counts[j]}")
    return (buf[tok] - 48).reshape(-1, width), blank


def _binary_rows(entry: _Entry, width: int, on_rows, progress: bool = False,
                 desc: str = "") -> tuple[int, str]:
    """Stream ``entry`` in chunks of whole lines, calling ``on_rows(first_row, rows)``.

    Returns (number of rows, sha256 of the file). Only trailing blank lines are allowed.
    """
    from tqdm import tqdm

    h = hashlib.sha256()
    n_rows = 0
    n_lines = 0
    first_blank = 0  # line number of the first blank line, 0 if none yet
    rest = b""
    total = None
    if entry.member is None:
        total = entry.location.stat().st_size
    else:
        with zipfile.ZipFile(entry.location) as z:
            total = z.getinfo(entry.member).file_size
    with entry.open() as f, tqdm(total=total, desc=desc, unit="B", unit_scale=True,
                                 disable=not progress) as bar:
        while True:
            data = f.read(_CHUNK)
            h.update(data)
            bar.update(len(data))
            if data:
                data = rest + data
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
                block, rest = data[:cut], data[cut:]
            else:
                block, rest = rest, b""
            if block:
                rows, blank = _binary_block(block, width, str(entry), n_lines)
                # Only trailing blank lines: a blank line inside would shift every later row.
                if not first_blank and blank.any():
                    first_blank = n_lines + int(np.argmax(blank)) + 1
                if first_blank and len(rows) and n_lines + int(np.flatnonzero(~blank)[-1]) + 1 > first_blank:
                    raise PipelineError(f"nuswide: {entry}:{first_blank}: blank line (rows would shift)")
                if len(rows):
                    on_rows(n_rows, rows)
                n_rows += len(rows)
                n_lines += len(blank)
            if not data:
                break
    return n_rows, h.hexdigest()


def normalize_image_path(line: str) -> str:
    """``actor\\0001_2.jpg`` or ``C:\\ImageData\\Flickr\\actor\\0001_2.jpg`` -> ``actor/0001_2.jpg``.

    The official lists use Windows separators; NUS-WIDE-urls.txt adds the authors' drive and
    ``ImageData\\Flickr`` prefix, which is dropped so both files name an image the same way.
    """
    s = line.strip().replace("\\", "/")
    if len(s) >= 2 and s[1] == ":":
        s = s[2:]
    parts = [p for p in s.split("/") if p not in ("", ".")]
    low = [p.lower() for p in parts]
    if low[:2] == ["imagedata", "flickr"]:
        parts = parts[2:]
    elif low[:1] == ["flickr"]:
        parts = parts[1:]
    if not parts or ".." in parts:
        raise PipelineError(f"nuswide: bad image path {line!r}")
    return "/".join(parts)


def image_list_from_urls(entry: _Entry) -> tuple[list[str], str]:
    """The image list from NUS-WIDE-urls.txt: its first column, normalised, in file order; sha256.

    ``%`` lines are comments, and a first line whose first field is not a path (no ``\\`` or
    ``/``) is a column header.
    """
    lines, digest = _read_text_lines(entry)
    rels: list[str] = []
    header_possible = True
    for i, line in enumerate(lines, 1):
        if line.startswith("%"):
            continue
        field = line.split()[0]
        if header_possible and "\\" not in field and "/" not in field:
            header_possible = False
            continue
        header_possible = False
        try:
            rels.append(normalize_image_path(field))
        except PipelineError as e:
            raise PipelineError(f"nuswide: {entry}:{i}: {str(e).removeprefix('nuswide: ')}") from None
    if not rels:
        raise PipelineError(f"nuswide: {entry} lists no image")
    return rels, digest


def top_concepts(concepts: list[str], counts: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` concepts with the most positives; ties broken by name (alphabetical)."""
    order = sorted(range(len(concepts)), key=lambda j: (-int(counts[j]), concepts[j]))
    return order[:n]


def read_urls(entry: _Entry) -> tuple[dict[str, str], str]:
    """NUS-WIDE-urls.txt: normalised image path -> the URL to try (Middle, Large, Small, Original).

    Also returns the file's sha256.
    """
    lines, digest = _read_text_lines(entry)
    out: dict[str, str] = {}
    for i, line in enumerate(lines, 1):
        if line.startswith("%"):
            continue
        parts = line.split()
        if len(parts) < 3:
            raise PipelineError(f"nuswide: {entry}:{i}: expected 'file photo_id urls...', got {line[:60]!r}")
        cols = parts[2:6] + ["null"] * (6 - len(parts))
        large, middle, small, original = cols[:4]
        for url in (middle, large, small, original):
            if url.lower() != "null":
                out[normalize_image_path(parts[0])] = url
                break
    return out, digest


# --------------------------------------------------------------------------------------------
# Settings


def _setting_int(settings: dict, key: str, default: int, lo: int, hi: int | None = None) -> int:
    v = settings.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise PipelineError(f"nuswide: setting {key} must be an integer {rng}, got {v!r}")
    return int(v)


def _setting_choice(settings: dict, key: str, choices: tuple[str, ...]) -> str:
    v = settings.get(key) or choices[0]
    if v not in choices:
        raise PipelineError(f"nuswide: setting {key} must be one of {', '.join(choices)}, got {v!r}")
    return str(v)


def _setting_bool(settings: dict, key: str, default: bool) -> bool:
    v = settings.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise PipelineError(f"nuswide: setting {key} must be true or false, got {v!r}")
    return v


# --------------------------------------------------------------------------------------------
# Images


def _name_index(roots: list[Path], names: set[str]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Files under ``roots`` (all depths) whose lower-case name is in ``names``: name -> path, and
    the names found more than once (name -> their paths; two links to one file count once).

    Hidden folders are skipped; symbolic links to files count, links to folders are not followed.
    """
    found: dict[str, Path] = {}
    twice: dict[str, list[Path]] = {}
    stack = [str(r) for r in reversed(roots)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # unreadable folder
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if not e.name.startswith("."):
                        subdirs.append(e.path)
                    continue
                key = e.name.lower()
                if key not in names or not e.is_file():
                    continue
            except OSError:
                continue
            p = Path(e.path)
            if key not in found:
                found[key] = p
                continue
            with contextlib.suppress(OSError):
                if os.path.samefile(found[key], p):
                    continue
            twice.setdefault(key, [found[key]]).append(p)
        stack.extend(reversed(subdirs))
    return found, twice


class _ImageFinder:
    """Finds the image of an image-list entry (``concept/file``) under the roots.

    First at ``root/rel`` or ``root/Flickr/rel`` (the authors' tree), else by its file name
    anywhere under a root: users often keep all images in one folder (``images/0001_2.jpg``).
    The file names are indexed once, on the first image not found by path (the full set is
    269,648 images: no directory walk per image). A name found more than once is ambiguous: the
    image counts as missing.
    """

    def __init__(self, roots: list[Path], rels: list[str]):
        self.roots = roots
        self.names = {PurePosixPath(r).name.lower() for r in rels}
        self.by_name: dict[str, Path] | None = None
        self.twice: dict[str, list[Path]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Look again which roots (and ``Flickr/`` subfolders) exist (after downloads)."""
        self.bases = [str(d) for r in self.roots for d in (r, r / "Flickr") if d.is_dir()]

    def _name(self, rel: str) -> str:
        return PurePosixPath(rel).name.lower()

    def find(self, rel: str) -> Path | None:
        for base in self.bases:  # os.path on strings: 186k lookups, fast
            p = os.path.join(base, rel)
            if os.path.isfile(p):
                return Path(p)
        if self.by_name is None:
            self.by_name, self.twice = _name_index([r for r in self.roots if r.is_dir()], self.names)
        name = self._name(rel)
        p = self.by_name.get(name)
        return p if p is not None and name not in self.twice else None

    def by_file_name(self, rel: str, path: Path) -> bool:
        """Whether ``path`` (found for ``rel``) was found by file name, not by path."""
        return self.by_name is not None and self.by_name.get(self._name(rel)) == path

    def ambiguous(self, rel: str) -> list[Path] | None:
        return self.twice.get(self._name(rel))


def _download_images(rels: list[str], urls: dict[str, str], dest: Path, finder: _ImageFinder,
                     progress: bool) -> dict:
    """Fetch the images not already present; return counts and the first failure."""
    todo = [r for r in rels if finder.find(r) is None]
    stats = {"attempted": 0, "downloaded": 0, "failed": 0, "no_url": 0, "first_failure": None}
    # Flickr publishes no checksums: keep fetch's per-file "no checksum known" warning (and its
    # failures, counted below) out of the log, which would otherwise get one line per image.
    dl_log = logging.getLogger("pipeline.data.download")
    level = dl_log.level
    dl_log.setLevel(logging.ERROR)
    try:
        _download_loop(todo, urls, dest, stats, progress)
    finally:
        dl_log.setLevel(level)
    if stats["failed"]:
        log.warning("nuswide: %d of %d image downloads failed (first: %s)", stats["failed"],
                    stats["attempted"], stats["first_failure"])
    return stats


def _download_loop(todo: list[str], urls: dict[str, str], dest: Path, stats: dict, progress: bool) -> None:
    from tqdm import tqdm

    for rel in tqdm(todo, desc="nuswide images", unit="img", disable=not progress):
        url = urls.get(rel)
        if url is None:
            stats["no_url"] += 1
            continue
        stats["attempted"] += 1
        target = dest / rel
        try:
            path = fetch(Remote(url=url, filename=target.name), target.parent, progress=False, retries=0)
            with open(path, "rb") as f:
                ok = f.read(3) == _JPEG_MAGIC
            if not ok:
                path.unlink()
                raise PipelineError("not a JPEG (Flickr's placeholder for a removed photo?)")
        except (PipelineError, OSError) as e:
            stats["failed"] += 1
            if stats["first_failure"] is None:
                stats["first_failure"] = f"{url}: {e}"
            continue
        stats["downloaded"] += 1


def _place_image(src: Path, dst: Path, mode: str) -> None:
    """Make ``dst`` (under out_dir/images) refer to ``src``: a symlink or a copy.

    Reruns skip what is in place: a link to ``src``, or a copy with ``src``'s size and mtime.
    """
    with contextlib.suppress(OSError):
        if dst.exists() and os.path.samefile(dst, src) and (mode == "symlink" or not dst.is_symlink()):
            return  # already in place (or the image folder is out_dir/images itself)
        if mode == "copy" and not dst.is_symlink():
            a, b = dst.stat(), src.stat()
            if a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns:
                return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if mode == "symlink":
            tmp = dst.with_name(f".{dst.name}.tmp-link")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(os.path.abspath(src), tmp)
            os.replace(tmp, dst)
        else:
            if dst.is_symlink():
                dst.unlink()
            with atomic_output(dst) as tmp:
                shutil.copy2(src, tmp)
    except OSError as e:
        raise PipelineError(f"nuswide: cannot {'link' if mode == 'symlink' else 'copy'} {src} to {dst}: {e}"
                            + (" (try images_mode: absolute)" if mode == "symlink" else "")) from None


# --------------------------------------------------------------------------------------------
# Public API


def prepare(out_dir: Path, settings: dict, *, progress: bool = True) -> Path:
    """Write NUS-WIDE under ``out_dir`` in the raw form; return ``out_dir/"manifest.jsonl"``.

    ``settings``: ``path`` (folder with the official metadata, extracted or as zips; may be
    omitted to download it), ``images`` (folder with the ``Flickr/`` image tree, or with the
    image files themselves), ``download_dir``
    (default ``out_dir/"downloads"``), ``mirror`` (for the metadata downloads), ``n_concepts``
    (10), ``missing_image`` (drop | error), ``images_mode`` (symlink | copy | absolute),
    ``hash_images`` (true), ``download_images`` (false), ``seed`` (unused). See the module
    docstring for the rules.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    n_concepts = _setting_int(settings, "n_concepts", 10, 1)
    missing_policy = _setting_choice(settings, "missing_image", MISSING_POLICIES)
    images_mode = _setting_choice(settings, "images_mode", IMAGE_MODES)
    hash_images = _setting_bool(settings, "hash_images", True)
    download_images = _setting_bool(settings, "download_images", False)
    mirror = settings.get("mirror") or None
    path = Path(settings["path"]).expanduser() if settings.get("path") else None
    download_dir = Path(settings.get("download_dir") or out_dir / "downloads").expanduser()
    images = Path(settings["images"]).expanduser() if settings.get("images") else None
    if path is not None and not path.is_dir():
        raise PipelineError(f"nuswide: path {path} is not a folder (the official NUS-WIDE metadata)")
    if images is None and not download_images:
        raise PipelineError("nuswide: setting 'images' must name your folder of NUS-WIDE images (the "
                            "Flickr/ tree, or one folder of the files; NUS distributes them on request "
                            "only), or set download_images: true")
    if images is not None and not images.is_dir():
        raise PipelineError(f"nuswide: images folder {images} does not exist")
    begin_rewrite(out_dir, "nuswide")

    folders = ([path] if path is not None else []) + [download_dir]
    files = _Files(folders, download_dir, mirror, progress)
    sources: dict[str, str] = {}

    # Image list: the row order of every other file. Imagelist.txt (ImageList.zip); the current
    # bundle lacks it, and NUS-WIDE-urls.txt lists the same images in the same order.
    e_list = files.find("Imagelist.txt", parent="ImageList")
    from_urls = False
    if e_list is None and (e_urls := files.find("NUS-WIDE-urls.txt")) is not None:
        e_list, from_urls = e_urls, True
    if e_list is None:
        e_list = files.get("Imagelist.txt", "imagelist", parent="ImageList", hint=(
            f"; or put NUS-WIDE-urls.txt (the same images in the same order; extract it from "
            f"{SOURCES['urls'].filename}, {SOURCES['urls'].url}) into {folders[0]}"))
    if from_urls:
        rels, sources[e_list.label] = image_list_from_urls(e_list)
        log.info("nuswide: no Imagelist.txt: the row order is that of %s, which lists the same "
                 "images in the same order (%d images)", e_list, len(rels))
    else:
        lines, sources[e_list.label] = _read_text_lines(e_list)
        rels = [normalize_image_path(s) for s in lines]
        log.info("nuswide: %d images in %s", len(rels), e_list)
    n = len(rels)

    def rows_differ(e: _Entry, rows: int | None) -> PipelineError:
        """A file whose row count is not the image list's (rows None: more rows)."""
        if from_urls:
            has = "more rows" if rows is None else f"{rows} rows"
            return PipelineError(f"nuswide: {e_list} lists {n} images but {e} has {has}, so it cannot "
                                 f"give the row order; put Imagelist.txt into {folders[0]} "
                                 f"({_origin('imagelist')})")
        if rows is None:
            return PipelineError(f"nuswide: {e} has more rows than the {n} images of {e_list}")
        return PipelineError(f"nuswide: {e} has {rows} rows, {e_list} {n}")

    # Concepts and their ground truth; the top-n by number of positives.
    e_con = files.get("Concepts81.txt", "concepts")
    concepts, sources[e_con.label] = _read_text_lines(e_con)
    concepts = [c.split()[0] for c in concepts]
    if len(set(concepts)) != len(concepts):
        raise PipelineError(f"nuswide: {e_con} lists a concept twice")
    if n_concepts > len(concepts):
        raise PipelineError(f"nuswide: n_concepts={n_concepts} but {e_con} has {len(concepts)} concepts")
    y_all = np.zeros((n, len(concepts)), dtype=np.uint8)
    for j, c in enumerate(tqdm(concepts, desc="nuswide labels", unit="concept", disable=not progress)):
        e = files.get(_labels_name(c), "groundtruth", parent="AllLabels")

        def put(first: int, rows: np.ndarray, j=j, e=e) -> None:
            if first + len(rows) > n:
                raise rows_differ(e, None)
            y_all[first:first + len(rows), j] = rows[:, 0]

        rows_read, sources[e.label] = _binary_rows(e, 1, put)
        if rows_read != n:
            raise rows_differ(e, rows_read)
    counts = y_all.sum(axis=0, dtype=np.int64)
    top = top_concepts(concepts, counts, n_concepts)
    classes = [concepts[j] for j in top]
    log.info("nuswide: the %d most frequent concepts: %s", n_concepts,
             ", ".join(f"{concepts[j]} ({int(counts[j])})" for j in top))
    if n == N_IMAGES and n_concepts == len(KNOWN_TOP10) and set(classes) != set(KNOWN_TOP10):
        log.warning("nuswide: top-10 concepts differ from the literature's %s", ", ".join(KNOWN_TOP10))
    y = y_all[:, top]
    keep = np.flatnonzero(y.any(axis=1))
    log.info("nuswide: %d of %d pairs have at least one of them%s", len(keep), n,
             f" (paper: {PAPER_N_PAIRS:,})" if n == N_IMAGES and n_concepts == 10 else "")

    # Tags: the 1,000-d official vector, as the list of TagList1k entries that are 1.
    e_vocab = files.get("TagList1k.txt", "tags")
    vocab_lines, sources[e_vocab.label] = _read_text_lines(e_vocab)
    vocab = [s.split()[0] for s in vocab_lines]
    if len(set(vocab)) != len(vocab):
        dup = next(t for t in vocab if vocab.count(t) > 1)
        raise PipelineError(f"nuswide: {e_vocab} lists the tag {dup!r} twice")
    e_tags = files.get("AllTags1k.txt", "tags")
    keep_mask = np.zeros(n, dtype=bool)
    keep_mask[keep] = True
    tag_idx: dict[int, np.ndarray] = {}

    def put_tags(first: int, rows: np.ndarray) -> None:
        if first + len(rows) > n:
            raise rows_differ(e_tags, None)
        local = np.flatnonzero(keep_mask[first:first + len(rows)])
        r, c = np.nonzero(rows[local])
        splits = np.searchsorted(r, np.arange(1, len(local)))
        for li, cols in zip(local, np.split(c, splits)):
            tag_idx[first + int(li)] = cols

    rows_read, sources[e_tags.label] = _binary_rows(e_tags, len(vocab), put_tags, progress, "nuswide tags")
    if rows_read != n:
        raise rows_differ(e_tags, rows_read)

    # Images: found in the user's folder (or downloaded), else dropped by the policy.
    dl_images = download_dir / "Flickr"
    roots = ([images] if images is not None else []) + [dl_images]
    kept_rels = [rels[i] for i in keep]
    finder = _ImageFinder(roots, kept_rels)
    download_stats = None
    if download_images:
        e_urls = _pick(files.index, "NUS-WIDE-urls.txt")
        if e_urls is None:
            if "urls" not in files.tried:
                files._fetch("urls", "NUS-WIDE-urls.txt")
            raise PipelineError(f"nuswide: download_images needs NUS-WIDE-urls.txt: extract "
                                f"{download_dir / SOURCES['urls'].filename} (RAR) into {download_dir}")
        urls, sources[e_urls.label] = read_urls(e_urls)
        download_stats = _download_images(kept_rels, urls, dl_images, finder, progress)
        finder.refresh()
    found: list[Path | None] = [finder.find(r) for r in
                                tqdm(kept_rels, desc="nuswide find images", unit="img", disable=not progress)]
    missing = [r for r, p in zip(kept_rels, found) if p is None]
    where = " or ".join(str(r) for r in roots if r.is_dir()) or str(roots[0])
    n_by_name = sum(1 for r, p in zip(kept_rels, found) if p is not None and finder.by_file_name(r, p))
    if n_by_name:
        log.info("nuswide: %d images found by file name under %s (not at Flickr/<concept>/<file>)",
                 n_by_name, where)
    ambiguous = [r for r in missing if finder.ambiguous(r)]
    if ambiguous:
        first = PurePosixPath(ambiguous[0]).name
        log.warning("nuswide: %d image%s a file name found more than once under %s (%s: %s); treated "
                    "as missing", len(ambiguous), " has" if len(ambiguous) == 1 else "s have", where,
                    first, ", ".join(str(p) for p in finder.ambiguous(ambiguous[0])))
    if missing:
        msg = f"{len(missing)} of {len(kept_rels)} pairs have no image in {where} (first: {missing[0]})"
        if missing_policy == "error":
            raise PipelineError(f"nuswide: {msg}; missing_image: error")
        log.warning("nuswide: %s; dropped (missing_image: drop)", msg)

    width = max(6, len(str(n - 1)))
    pairs: list[Pair] = []
    n_no_tags = 0
    for i, rel, src in zip(tqdm(keep, desc="nuswide pairs", unit="pair", disable=not progress),
                           kept_rels, found):
        if src is None:
            continue
        if images_mode == "absolute":
            image = os.path.abspath(src)
        else:
            image = f"images/{rel}"
            _place_image(src, out_dir / image, images_mode)
        tags = [vocab[c] for c in tag_idx.get(int(i), ())]
        n_no_tags += not tags
        pairs.append(Pair(id=f"{int(i):0{width}d}", image=image, caption=" ".join(tags), tags=tags,
                          labels=[int(k) for k in np.flatnonzero(y[i])], split=None,
                          sha256=sha256_file(src) if hash_images else None))
    if not pairs:
        raise PipelineError(f"nuswide: no pairs left: {len(missing)} of {len(kept_rels)} kept pairs "
                            f"have no image in {where}")
    if n_no_tags:
        log.info("nuswide: %d of %d pairs have no tag (kept, as in the paper)", n_no_tags, len(pairs))

    meta = {
        "dataset": settings.get("dataset", "nuswide"),
        "provenance": {
            "adapter": "pipeline.data.nuswide", "version": ADAPTER_VERSION,
            "protocol": "CMIMH section IV-A: pairs with >= 1 of the n most frequent concepts",
            "n_concepts": n_concepts,
            "concept_rule": "most positives in Groundtruth/AllLabels over all rows; ties by name",
            "concept_counts": {concepts[j]: int(counts[j]) for j in top},
            "all_concept_counts": {c: int(k) for c, k in zip(concepts, counts)},
            "counts": {"total": n, "kept_by_concepts": int(len(keep)), "missing_image": len(missing),
                       "final": len(pairs), "no_tags": n_no_tags},
            "first_missing_images": missing[:5],
            "images_by_name": {"found": n_by_name, "ambiguous": len(ambiguous),
                               "first_ambiguous": PurePosixPath(ambiguous[0]).name if ambiguous else None},
            "missing_image": missing_policy, "images_mode": images_mode, "hash_images": hash_images,
            "images": str(images) if images is not None else None,
            "download_images": download_stats,
            "image_list": {"file": e_list.label,
                           "rule": ("first column of NUS-WIDE-urls.txt, in file order (no Imagelist.txt)"
                                    if from_urls else "ImageList/Imagelist.txt")},
            "tag_vocab": "TagList1k.txt, all entries in file order",
            "no_tag_pairs": "kept (the paper does not drop them)",
            "sources": dict(sorted(sources.items())),
            "downloaded": dict(sorted(files.fetched.items())),
        },
    }
    return write_manifest(out_dir, classes, pairs, tag_vocab=vocab, meta=meta)


# --------------------------------------------------------------------------------------------
# The official low-level features (the handcrafted protocol, the paper's Table VIII)

#: The image model of the handcrafted protocol: NUS-WIDE's 500-d bag of SIFT visual words.
BOW_SIFT_FILE = "BoW_int.dat"
BOW_SIFT_DIM = 500


def parse_bow_sift(f: BinaryIO, rows: np.ndarray, where: str, dim: int = BOW_SIFT_DIM) -> tuple[np.ndarray, int, str]:
    """Rows ``rows`` (image-list row numbers) of a low-level feature file in NUS-WIDE's text
    format: one image per line, ``dim`` whitespace-separated numbers, lines in image-list order.

    Returns (``len(rows)`` x ``dim`` float32, the file's row count, its SHA-256). Streamed: only
    the wanted rows are kept (the file has 269,648 lines). A line of another width, a value that
    is not a number, or a wanted row past the end is one line naming the file and line.
    """
    rows = np.asarray(rows, dtype=np.int64)
    want = {int(r): i for i, r in enumerate(rows)}
    out = np.zeros((len(rows), dim), dtype=np.float32)
    h = hashlib.sha256()
    n = 0
    for line in f:
        h.update(line)
        if not line.strip():
            continue
        j = want.get(n)
        if j is not None:
            parts = line.split()
            if len(parts) != dim:
                raise PipelineError(f"nuswide: {where}: line {n + 1} has {len(parts)} values, not {dim}")
            try:
                out[j] = np.array(parts, dtype=np.float32)
            except ValueError:
                raise PipelineError(f"nuswide: {where}: line {n + 1} holds a value that is not a number") from None
        n += 1
    missing = rows[rows >= n]
    if len(missing):
        raise PipelineError(f"nuswide: {where} has {n} rows, but pair id {int(missing[0])} is asked for "
                            f"(a file of another image list?)")
    if n != N_IMAGES:
        log.warning("nuswide: %s has %d rows, not the official %d", where, n, N_IMAGES)
    return out, n, h.hexdigest()


def read_bow_sift(rows, path: Path | None, download_dir: Path, mirror: str | None = None,
                  progress: bool = True) -> tuple[np.ndarray, dict]:
    """The official 500-d bag of SIFT words (``BoW_int.dat``) of image-list rows ``rows`` (the
    manifest's pair ids), found by name in ``path`` and ``download_dir`` (extracted, or inside a
    zip), else :data:`SOURCES` ``lowlevel`` is downloaded; that archive is RAR, which the
    standard library cannot read, so the message then asks for the extracted file.

    Returns (features, provenance: the file's label, rows and SHA-256, the archive's URL).
    """
    folders = ([Path(path)] if path is not None else []) + [Path(download_dir)]
    files = _Files(folders, Path(download_dir), mirror, progress)
    e = files.get(BOW_SIFT_FILE, "lowlevel", hint=(
        f"; {SOURCES['lowlevel'].filename} is a RAR archive: extract {BOW_SIFT_FILE} from it "
        f"(or zip its Low_Level_Features/ folder) into {folders[0]}"))
    with e.open() as f:
        feats, n, sha = parse_bow_sift(f, np.asarray(rows), str(e))
    log.info("nuswide: %d rows of the official bag of SIFT words (%d-d) from %s", len(feats), BOW_SIFT_DIM, e)
    return feats, {"file": e.label, "rows_in_file": n, "sha256": sha, "url": SOURCES["lowlevel"].url,
                   "archive_sha256": None}
