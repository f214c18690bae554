"""``source: folder``: your own images and captions in the img2dataset "files" layout.

``path`` holds, in any nesting of folders, ``KEY.jpg`` (or ``.jpeg``, ``.png``, ``.webp``; any
case) with ``KEY.txt``, its caption (UTF-8, a byte-order mark allowed), and optionally
``KEY.json``: ``{"labels": [...], "tags": [...], "split": "query" | "database"}`` (img2dataset's
own JSON, with its url and status fields, is read the same way: the keys it lacks are empty). A
pair's id is its key relative to ``path`` (``2019/trip/IMG_0001``); files and folders whose names
start with a dot are skipped (``.DS_Store``, macOS's ``._IMG_0001.jpg``), as are symbolic links to
folders. The pairs are sorted by id, so the manifest does not depend on the file system's order.

Checks and policies: :mod:`pipeline.data.collection`. Captions without an image are counted and
logged (a README.txt is not a pair).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterator

from pipeline.data.collection import IMAGE_EXTS, CollectionSettings, Item, decode_text, labels_tags_split, prepare_items
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def scan(root: Path) -> tuple[dict[str, dict[str, list[Path]]], list[str]]:
    """``{key: {"image": [...], "txt": [...], "json": [...]}}`` under ``root`` (keys relative, POSIX)."""
    groups: dict[str, dict[str, list[Path]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            ext = p.suffix.lower().lstrip(".")
            kind = "image" if ext in IMAGE_EXTS else ext if ext in ("txt", "json") else None
            if kind is None:
                continue
            key = p.relative_to(root).with_suffix("").as_posix()
            groups.setdefault(key, {"image": [], "txt": [], "json": []})[kind].append(p)
    return groups, sorted(groups)


def items(root: Path) -> Iterator[Item]:
    groups, keys = scan(root)
    orphans = 0
    for key in keys:
        g = groups[key]
        if not g["image"]:
            orphans += 1
            continue
        img = g["image"][0]
        caption = None
        if g["txt"]:
            caption = decode_text(g["txt"][0].read_bytes(), str(g["txt"][0]))
        labels, tags, split = [], [], None
        if g["json"]:
            jp = g["json"][0]
            try:
                obj = json.loads(decode_text(jp.read_bytes(), str(jp)))
            except ValueError as e:
                raise PipelineError(f"{jp}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
            labels, tags, split = labels_tags_split(obj, str(jp))
        yield Item(key=key, where=str(img), image=str(img.resolve()), caption=caption, tags=tags, labels=labels,
                   split=split)
        for extra in g["image"][1:]:  # KEY.jpg and KEY.png: the second is a duplicate key
            yield Item(key=key, where=str(extra), image=str(extra.resolve()), caption=None)
    if orphans:
        log.warning("folder %s: %d caption or JSON file(s) without an image, ignored", root, orphans)


def prepare(out_dir: str | Path, settings: dict, *, progress: bool = True) -> Path:
    """The prepare stage's adapter for ``source: folder``."""
    s = CollectionSettings.of(settings, "folder")
    root = Path(s.path)
    if not root.is_dir():
        raise PipelineError(f"folder data set {settings['dataset']!r}: no such folder {root}")
    return prepare_items(out_dir, items(root), s, "folder", settings["dataset"], progress=progress,
                         extra_meta={"folder": str(root.resolve())})
