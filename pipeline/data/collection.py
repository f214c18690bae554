"""What the adapters of your own collections share (``source: folder``, ``table``, ``webdataset``):
their settings, the checks of every item, and the prepared form they all write.

An adapter yields :class:`Item` s (a key, where its image is, its caption, and optionally tags,
labels and a split), each naming where it came from (``file:line``, a tar shard's member) for its
messages. :func:`prepare_items` checks each of them once and writes ``manifest.jsonl`` +
``meta.json`` (:mod:`pipeline.data.manifest`), referring to the images where they are (absolute
paths; a tar shard's byte range): nothing is copied or unpacked.

The checks, and what happens (``image_features.on_bad_image``: ``error`` stops the run after
counting them all, with one line naming the first; ``drop`` drops the pair; both log and count,
and ``meta.json`` records the counts and the first ids):

* a missing or unreadable image (decoded once, at reduced size for JPEG: fast, yet every byte is
  read), its SHA-256 recorded for extraction to check the bytes again;
* a key seen twice (``a.jpg`` and ``a.png``; the same id in two rows or two shards): the first is kept;
* an empty caption (after stripping white space), or no caption at all: always **dropped**, counted
  and logged, never an error. A pair without text cannot be a cross-modal pair, and web-scale
  collections (img2dataset's downloads of alt texts) hold many such rows; stopping a million-row
  prepare on each would make the collection unusable, while dropping them changes no other pair.

A malformed row (a line that is not JSON, a bad split value, a caption file that is not UTF-8) is
not a policy matter: one line naming the file and line stops the run.

Labels are optional: without any, ``classes`` is empty and evaluation is paired (each held-out
image's own caption is its relevant item, and vice versa).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pipeline.data.manifest import Pair, begin_rewrite, write_manifest
from pipeline.errors import PipelineError
from pipeline.settings import Settings, setting

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
QUERY_SPLITS = ("query", "test", "val", "validation")
DATABASE_SPLITS = ("database", "db", "train", "retrieval")
#: Ids and places kept per reason in meta.json (the log names every one).
KEEP_IDS = 100


@dataclass(frozen=True)
class Columns(Settings):
    """The table's column names (``columns:`` of a ``table`` data set)."""

    image: str = setting("image", "the image: a path relative to the table's folder, or absolute")
    caption: str = setting("caption", "the caption")
    tags: str = setting("tags", "optional: a list, a JSON list, or words separated by commas, semicolons or |")
    labels: str = setting("labels", "optional: the labels, as tags; none at all: paired evaluation")
    split: str = setting("split", "optional: query (test, val) or database (train); for every row or none")
    id: str = setting("id", "optional: the pair's id (default: the image path without its extension)")


@dataclass(frozen=True)
class CollectionSettings(Settings):
    """The settings of a ``folder``, ``table`` or ``webdataset`` data set (``datasets.NAME``)."""

    path: str = setting("", "folder: the folder; table: the table file; webdataset: the shards, brace-expanded "
                        "(data/shards/{00000..00099}.tar)")
    on_bad_image: str = setting("error", "image_features.on_bad_image: a missing, unreadable or duplicate image "
                                "stops prepare (error, after counting them all) or its pair is dropped (drop)",
                                choices=("error", "drop"))
    min_tag_count: int = setting(1, "a tag is in the tag vocabulary when at least this many pairs carry it", min=1)
    columns: Columns = setting(Columns(), "table: the column names")
    format: str = setting("auto", "table: auto (by extension) | csv | tsv | jsonl | parquet",
                          choices=("auto", "csv", "tsv", "jsonl", "parquet"))
    list_separator: str | None = setting(None, "table: the separator of tags and labels in a text cell "
                                         "(null: a JSON list, else commas, semicolons or |, else white space)")

    @classmethod
    def of(cls, settings: dict, source: str) -> "CollectionSettings":
        where = f"dataset {settings.get('dataset')!r} (source {source})"
        s = cls.from_dict({k: settings[k] for k in cls.keys() if k in settings}, where)
        if not s.path:
            raise PipelineError(f"{where}: path is required")
        return s


@dataclass
class Item:
    """One pair as an adapter found it, before the checks."""

    key: str
    where: str                       # for messages: "file:line", a file, or "shard.tar:member"
    image: str | None                # absolute path of the image file (or of the tar shard); None: none found
    caption: str | None
    tags: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    member: str | None = None        # a tar member and the byte range of its data
    offset: int | None = None
    size: int | None = None
    data: bytes | None = None        # the image bytes when the adapter has them already (a tar stream)
    image_where: str | None = None   # the image as named in messages (default: ``image``)


def parse_list(value: Any, separator: str | None = None) -> list[str]:
    """Tags or labels from a cell: a list, a JSON list, or separated words (see ``list_separator``)."""
    import json
    import re

    if value is None:
        return []
    if isinstance(value, float) and value != value:  # NaN from a table
        return []
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, str)):
        items = list(value.tolist() if hasattr(value, "tolist") else value)
        return [str(v).strip() for v in items if v is not None and str(v).strip()]
    text = str(value).strip()
    if not text:
        return []
    if separator is not None:
        parts = text.split(separator)
    elif text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            raise ValueError(f"not a JSON list: {text[:60]!r}") from None
        if not isinstance(parsed, list):
            raise ValueError(f"not a JSON list: {text[:60]!r}")
        return parse_list(parsed)
    else:
        sep = next((c for c in ",;|" if c in text), None)
        parts = text.split(sep) if sep else re.split(r"\s+", text)
    return [p.strip() for p in parts if p.strip()]


def normalize_split(value: Any, where: str) -> str | None:
    """``query`` / ``database`` / None from a split cell; anything else is one line naming ``where``."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    v = str(value).strip().lower()
    if not v:
        return None
    if v in QUERY_SPLITS:
        return "query"
    if v in DATABASE_SPLITS:
        return "database"
    raise PipelineError(f"{where}: split {value!r} is not one of {', '.join(QUERY_SPLITS + DATABASE_SPLITS)}")


def decode_text(data: bytes, where: str) -> str:
    """A caption file's text (UTF-8, a byte-order mark allowed); else one line naming it."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PipelineError(f"{where}: not valid UTF-8 (byte {e.start}); save the caption as UTF-8") from None


def clean_reason(e: BaseException) -> str:
    """An exception as one short line, without PIL's ``<_io.BytesIO object at 0x...>``."""
    import re

    msg = (str(e).strip().splitlines() or [""])[0][:200]
    msg = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", msg)
    return f"{type(e).__name__}: {msg}".rstrip(": ")


def check_image(data: bytes) -> str | None:
    """None when ``data`` decodes as an image, else why not (one line). JPEGs decode at 1/8 scale
    (``draft``): several times faster, yet every byte is read, so a truncated file is caught."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Exception as e:  # noqa: BLE001 - any decoding failure marks the image bad
        return clean_reason(e)
    return None


def _read_and_check(item: Item) -> tuple[str | None, str | None, str | None]:
    """(problem kind, reason, sha256) of an item's image: ``missing``/``unreadable`` or None."""
    if item.data is None and item.image is None:
        return "missing_image", "no image for this key", None
    data = item.data
    if data is None:
        try:
            data = Path(item.image).read_bytes()
        except FileNotFoundError:
            return "missing_image", "no such file", None
        except OSError as e:
            return "unreadable_image", f"{type(e).__name__}: {e.strerror or e}", None
    reason = check_image(data)
    if reason is not None:
        return "unreadable_image", reason, None
    return None, None, hashlib.sha256(data).hexdigest()


def _checked(items: Iterable[Item], workers: int) -> Iterator[tuple[Item, tuple]]:
    """Each item with its image check, in order; images checked on ``workers`` threads (PIL decodes
    without the GIL), a bounded window at a time (a tar stream's bytes are not all held)."""
    window = max(1, workers) * 16
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        batch: list[Item] = []
        for item in items:
            batch.append(item)
            if len(batch) >= window:
                yield from zip(batch, pool.map(_read_and_check, batch))
                batch = []
        if batch:
            yield from zip(batch, pool.map(_read_and_check, batch))


class Tally:
    """Counts and first places of each problem; logs the first few of each kind as warnings."""

    WARN = 10

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.first: dict[str, list[str]] = {}
        self.first_message: dict[str, str] = {}

    def add(self, kind: str, key: str, message: str) -> None:
        self.counts[kind] += 1
        self.first.setdefault(kind, [])
        self.first_message.setdefault(kind, message)
        if len(self.first[kind]) < KEEP_IDS:
            self.first[kind].append(key)
        (log.warning if self.counts[kind] <= self.WARN else log.debug)("%s", message)


def prepare_items(out_dir: str | Path, items: Iterable[Item], s: CollectionSettings, source: str,
                  dataset: str, progress: bool = True, extra_meta: dict | None = None,
                  workers: int | None = None) -> Path:
    """Check every item once and write the prepared form (``manifest.jsonl`` last); see the module
    docstring for what is checked and what each policy does."""
    from tqdm import tqdm

    root = Path(out_dir)
    begin_rewrite(root, f"{source} data")
    workers = workers or min(8, os.cpu_count() or 1)
    tally = Tally()
    kept: list[tuple[Item, str]] = []
    seen: dict[str, str] = {}
    found = 0
    for item, (kind, reason, sha) in tqdm(_checked(items, workers), desc=f"{source} items", unit="item",
                                          disable=not progress):
        found += 1
        item.data = None  # checked: the bytes are not held (a tar stream of millions)
        img = item.image_where or item.where
        if item.key in seen:
            tally.add("duplicate_key", item.key, f"{item.where}: duplicate key {item.key!r} (first: {seen[item.key]}); "
                      "the first is kept")
            continue
        seen[item.key] = item.where
        caption = (item.caption or "").strip()
        if item.caption is None or not caption:
            what = "no caption" if item.caption is None else "empty caption"
            tally.add("no_caption" if item.caption is None else "empty_caption", item.key,
                      f"{item.where}: {what} for key {item.key!r}; pair dropped")
            continue
        if kind is not None:
            tally.add(kind, item.key, f"{'missing' if kind == 'missing_image' else 'unreadable'} image for key "
                      f"{item.key!r}: {img} ({reason})")
            continue
        item.caption = caption
        kept.append((item, sha))
    bad = {k: tally.counts[k] for k in ("missing_image", "unreadable_image", "duplicate_key")}
    if any(bad.values()) and s.on_bad_image == "error":
        kind = next(k for k, v in bad.items() if v)
        parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in bad.items() if v)
        raise PipelineError(f"{source} {s.path}: {sum(bad.values())} bad item(s) ({parts}); first: "
                            f"{tally.first_message[kind]} (every one is in the log; fix them, or set "
                            "image_features.on_bad_image: drop to drop those pairs)")
    if not kept:
        raise PipelineError(f"{source} {s.path}: no usable pair among {found} item(s) "
                            f"({', '.join(f'{v} {k}' for k, v in tally.counts.items()) or 'none found'})")
    for kind, n in sorted(tally.counts.items()):
        log.warning("%s %s: %d pair(s) dropped: %s", source, s.path, n, kind.replace("_", " "))
    classes = sorted({lab for it, _ in kept for lab in it.labels})
    index = {c: j for j, c in enumerate(classes)}
    tag_counts = Counter(t for it, _ in kept for t in set(it.tags))
    vocab = sorted(t for t, c in tag_counts.items() if c >= s.min_tag_count) if tag_counts else None
    splits = Counter(it.split for it, _ in kept)
    if 0 < sum(v for k, v in splits.items() if k is not None) < len(kept):
        log.warning("%s: a split is given for %d of %d pairs: ignored (give it for every pair or none); the seeded "
                    "protocol draws the queries", source, len(kept) - splits[None], len(kept))
    pairs = [Pair(id=it.key, image=str(it.image), caption=it.caption, tags=it.tags,
                  labels=sorted({index[lab] for lab in it.labels}), split=it.split, sha256=sha,
                  member=it.member, offset=it.offset, size=it.size) for it, sha in kept]
    meta = {"dataset": dataset, "provenance": {
        "source": source, "path": s.path, "on_bad_image": s.on_bad_image, "found": found, "kept": len(pairs),
        "dropped": dict(sorted(tally.counts.items())), "dropped_first_ids": tally.first,
        "labelled": bool(classes), "min_tag_count": s.min_tag_count, **(extra_meta or {})}}
    manifest = write_manifest(root, classes, pairs, tag_vocab=vocab, meta=meta)
    log.info("%s %s: %d pairs (of %d items), %d classes%s, %d tags in the vocabulary", source, s.path, len(pairs),
             found, len(classes), "" if classes else " (no labels: evaluation will be paired)", len(vocab or []))
    return manifest


def labels_tags_split(obj: dict, where: str, separator: str | None = None) -> tuple[list[str], list[str], str | None]:
    """The ``labels``, ``tags`` and ``split`` of a sample's JSON object (any of them optional)."""
    if not isinstance(obj, dict):
        raise PipelineError(f"{where}: expected a JSON object with labels, tags, split")
    try:
        labels = parse_list(obj.get("labels"), separator)
        tags = list(dict.fromkeys(t.lower() for t in parse_list(obj.get("tags"), separator)))
    except ValueError as e:
        raise PipelineError(f"{where}: {e}") from None
    return labels, tags, normalize_split(obj.get("split"), where)

