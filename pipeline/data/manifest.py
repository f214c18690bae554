"""The raw on-disk form every data set adapter writes, and that extraction reads.

A prepared data set is a folder::

    data/{dataset}/
        images/...            raw image files (JPEG, PNG, ...)
        meta.json             {"dataset", "classes": [...], "tag_vocab": [...] | null, "provenance"}
        manifest.jsonl        one JSON object per pair, in a fixed order (written last)

Each manifest line is::

    {"id": "000123", "image": "images/000123.jpg", "sha256": "...",
     "caption": "a red ball ...", "tags": ["red", "ball"], "labels": [0, 3], "split": null}

``labels`` are indices into ``meta.json["classes"]`` (an empty list for a collection without
labels: evaluation is then paired); ``split`` is ``"query"`` or ``"database"`` where the data set
fixes it (MS-COCO val/train), else null and the seeded protocol applies. An image inside a tar
shard (a webdataset) has ``image`` = the tar file and ``member``, ``offset``, ``size``: the member's
name and the byte range of its data, read in place (never unpacked).
``manifest.jsonl`` is written atomically after everything else, so its presence means the folder
is complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import atomic_output, check_unique_ids


@dataclass
class Pair:
    """One image-text pair of a prepared data set."""

    id: str
    image: str
    caption: str
    tags: list[str]
    labels: list[int]
    split: str | None = None
    sha256: str | None = None
    member: str | None = None   # a tar shard's member (``image`` is then the tar file) ...
    offset: int | None = None   # ... and the byte range of its data
    size: int | None = None

    def to_json(self) -> dict:
        d = {"id": self.id, "image": self.image, "sha256": self.sha256, "caption": self.caption,
             "tags": list(self.tags), "labels": list(self.labels), "split": self.split}
        if self.member is not None:
            d.update({"member": self.member, "offset": int(self.offset), "size": int(self.size)})
        return d

    @property
    def where(self) -> str:
        """The image as a person names it: the file, or ``shard.tar:member``."""
        return self.image if self.member is None else f"{self.image}:{self.member}"


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes are: a whole file, or ``size`` bytes at ``offset`` of a tar shard."""

    path: Path
    offset: int | None = None
    size: int | None = None
    member: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.member is None else f"{self.path}:{self.member}"

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> bytes:
        """The image's bytes (a missing file raises FileNotFoundError; a short tar, OSError)."""
        if self.offset is None:
            return self.path.read_bytes()
        with open(self.path, "rb") as f:
            f.seek(int(self.offset))
            data = f.read(int(self.size))
        if len(data) != int(self.size):
            raise OSError(f"tar member {self.member} truncated ({len(data)} of {self.size} bytes)")
        return data


@dataclass
class Manifest:
    """A prepared data set: its root folder, metadata and pairs."""

    root: Path
    classes: list[str]
    pairs: list[Pair]
    tag_vocab: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def image_path(self, i: int) -> Path:
        """The image file (for an image inside a tar shard: the tar file; see :meth:`image_ref`)."""
        return self.root / self.pairs[i].image

    def image_ref(self, i: int) -> ImageRef:
        """Where pair ``i``'s image bytes are (a file, or a byte range of a tar shard)."""
        p = self.pairs[i]
        return ImageRef(self.root / p.image, p.offset, p.size, p.member)

    @property
    def labelled(self) -> bool:
        """Whether the data set has labels (classes); without, evaluation is paired."""
        return bool(self.classes)

    def label_matrix(self) -> np.ndarray:
        """Multi-hot labels, n x c uint8."""
        y = np.zeros((len(self.pairs), len(self.classes)), dtype=np.uint8)
        for i, p in enumerate(self.pairs):
            y[i, p.labels] = 1
        return y


def begin_rewrite(root: str | Path, who: str, subdir: str | None = None) -> Path:
    """Create ``root`` (or ``root/subdir``) and remove ``root/manifest.jsonl`` before an adapter
    rewrites the folder, so that it never looks complete while being rewritten; return the
    created folder. A folder that cannot be created is one line naming it."""
    root = Path(root)
    folder = root / subdir if subdir else root
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PipelineError(f"{who}: cannot create {folder}: {e}") from None
    (root / "manifest.jsonl").unlink(missing_ok=True)
    return folder


def write_manifest(root: str | Path, classes: list[str], pairs: Iterable[Pair],
                   tag_vocab: list[str] | None = None, meta: dict | None = None) -> Path:
    """Write ``meta.json`` then ``manifest.jsonl`` (atomically, last) under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta_obj = dict(meta or {})
    meta_obj.update({"classes": list(classes), "tag_vocab": tag_vocab})
    with atomic_output(root / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta_obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    pairs = list(pairs)
    check_unique_ids((p.id for p in pairs), str(root / "manifest.jsonl"))
    with atomic_output(root / "manifest.jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for p in pairs:
                f.write(json.dumps(p.to_json(), sort_keys=True) + "\n")
    return root / "manifest.jsonl"


SPLITS = (None, "query", "database")


def _bad_fields(d) -> str | None:
    """What is wrong with one parsed manifest line, or None.

    Types are checked, not coerced: ``"tags": "red ball"`` would otherwise become the tags r, e,
    d, ..., ``"labels": "11"`` the labels 1 and 1, ``1.7`` the label 1, and a misspelt split the
    seeded protocol for the whole data set, all without a word.
    """
    if not isinstance(d, dict):
        return f"not a JSON object but a {type(d).__name__}"
    missing = [k for k in ("id", "image", "labels") if k not in d]
    if missing:
        return f"missing key {missing[0]!r}"
    if isinstance(d["id"], bool) or not isinstance(d["id"], (str, int)) or str(d["id"]) == "":
        return f"'id' must be a non-empty string, not {d['id']!r}"
    if not isinstance(d["image"], str) or not d["image"].strip():
        return f"'image' must be a non-empty path string, not {d['image']!r}"
    if d.get("caption") is not None and not isinstance(d["caption"], str):
        return f"'caption' must be a string, not {type(d['caption']).__name__} {d['caption']!r}"
    tags = d.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        return f"'tags' must be a list of strings, not {tags!r}"[:200]
    labels = d["labels"]
    if not isinstance(labels, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in labels):
        return f"'labels' must be a list of class indices (integers), not {labels!r}"[:200]
    if d.get("split") not in SPLITS:
        return f"'split' must be null, 'query' or 'database', not {d['split']!r}"
    if d.get("sha256") is not None and not isinstance(d["sha256"], str):
        return f"'sha256' must be a hex string, not {d['sha256']!r}"
    if d.get("member") is not None:
        if not isinstance(d["member"], str):
            return f"'member' must be a tar member name, not {d['member']!r}"
        for k in ("offset", "size"):
            if isinstance(d.get(k), bool) or not isinstance(d.get(k), int) or d[k] < 0:
                return f"'{k}' (of tar member {d['member']!r}) must be a byte count >= 0, not {d.get(k)!r}"
    return None


def read_manifest(path: str | Path) -> Manifest:
    """Read ``manifest.jsonl`` (and ``meta.json`` beside it), checking every line.

    A line that is not UTF-8 JSON, lacks a key, has a label outside ``classes`` or repeats an id
    is one error naming the file and line.
    """
    path = Path(path)
    root = path.parent
    if not path.is_file():
        raise PipelineError(f"missing manifest: {path} (run the prepare stage first)")
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise PipelineError(f"missing {meta_path} beside {path}")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PipelineError(f"{meta_path}: not valid UTF-8 JSON ({str(e).splitlines()[0][:120]})") from None
    classes = meta.get("classes") if isinstance(meta, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        # a string would become its characters: labels against the wrong classes
        raise PipelineError(f"{meta_path}: 'classes' must be a list of class names (an empty list for a collection "
                            f"without labels), not {classes!r}"[:240])
    vocab = meta.get("tag_vocab")
    if vocab is not None and (not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab)):
        raise PipelineError(f"{meta_path}: 'tag_vocab' must be a list of tags or null, not {vocab!r}"[:240])
    pairs = []
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PipelineError(f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at offset "
                                    f"{e.start} of the line)") from None
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError as e:
                raise PipelineError(f"{path}:{lineno}: bad manifest line ({e})") from None
            problem = _bad_fields(d)
            if problem:
                raise PipelineError(f"{path}:{lineno}: bad manifest line ({problem})")
            pair = Pair(id=str(d["id"]), image=d["image"], caption=d.get("caption") or "",
                        tags=list(d.get("tags") or []), labels=[int(c) for c in d["labels"]],
                        split=d.get("split"), sha256=d.get("sha256"), member=d.get("member"),
                        offset=None if d.get("member") is None else int(d["offset"]),
                        size=None if d.get("member") is None else int(d["size"]))
            if any(c < 0 or c >= len(classes) for c in pair.labels):
                raise PipelineError(f"{path}:{lineno}: label index out of range 0..{len(classes) - 1}")
            if pair.id in first_line:
                raise PipelineError(f"{path}:{lineno}: duplicate id {pair.id!r} (first on line "
                                    f"{first_line[pair.id]}); ids must be unique")
            first_line[pair.id] = lineno
            pairs.append(pair)
    if not pairs:
        raise PipelineError(f"{path}: manifest has no pairs")
    return Manifest(root=root, classes=list(classes), pairs=pairs,
                    tag_vocab=meta.get("tag_vocab"), meta=meta)
