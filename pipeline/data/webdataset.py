"""``source: webdataset``: tar shards in the WebDataset layout, read in place (never unpacked).

``path: data/shards/{00000..00099}.tar`` (brace-expanded, ``::`` separating several patterns, as
``webdataset`` itself does); relative paths are relative to the working directory. A sample is the
members sharing a key (the member's path up to the first dot of its file name, WebDataset's own
rule): ``KEY.jpg`` or ``.jpeg``/``.png``/``.webp`` (the image), ``KEY.txt`` (the caption) and
optionally ``KEY.json`` (``{"labels", "tags", "split"}``, img2dataset's JSON read the same way).
A field is recognised by the last part of its extension, in lower case, as WebDataset's decoders
do (``KEY.frame.JPG`` is an image); other members (``.cls``, ``__index__``...) are ignored.

Each shard is read once, as a stream (``tarfile``'s ``r|`` mode), in order: its images are checked
(:mod:`pipeline.data.collection`) and recorded in the manifest by the tar file, the member and the
byte range of its data, from which extraction reads each image directly (so the shards must be
plain, uncompressed ``.tar`` files, as img2dataset and WebDataset write them: a compressed shard
is refused in one line). The tar shards map onto the extraction shards: ``image_features.shards:
N`` gives each extraction job whole tar shards (:func:`pipeline.stages.extract.image_rows`).
A key seen in two shards (or twice in one) is a duplicate key.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path
from typing import Iterator

from pipeline.data.collection import IMAGE_EXTS, CollectionSettings, Item, decode_text, labels_tags_split, prepare_items
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

MAX_TEXT = 1 << 20  # a caption or JSON member larger than 1 MiB is not one


def shard_paths(pattern: str) -> list[Path]:
    """The shard files of ``pattern`` (brace expansion by WebDataset's own ``expand_urls``)."""
    from webdataset.shardlists import expand_urls

    urls = expand_urls(pattern)
    for u in urls:
        if "://" in u and not u.startswith("file://"):
            raise PipelineError(f"webdataset shard {u}: only local files are read (copy the shards first)")
    paths = [Path(u[len("file://"):] if u.startswith("file://") else u) for u in urls]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise PipelineError(f"webdataset: {len(missing)} of {len(paths)} shard(s) missing, first {missing[0]} "
                            f"(path: {pattern})")
    for p in paths:
        with open(p, "rb") as f:
            magic = f.read(6)
        if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:6] == b"\xfd7zXZ\x00" or magic[:4] == b"\x28\xb5\x2f\xfd":
            raise PipelineError(f"webdataset shard {p} is compressed: images are read in place, which needs plain "
                                ".tar shards (decompress it, e.g. gunzip; img2dataset writes plain .tar)")
    return paths


def split_key(name: str) -> tuple[str | None, str | None]:
    """(key, lower-case extension) of a member name, by WebDataset's rule (``base_plus_ext``)."""
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(name)
    return key, (ext.lower() if ext else None)


def field(ext: str | None) -> str:
    """What a member's extension holds: its last part (``frame.jpg`` -> ``jpg``)."""
    return (ext or "").rsplit(".", 1)[-1]


def _first(g: dict, kinds) -> str | None:
    return next((e for e in g if field(e) in kinds), None)


def _samples(shard: Path) -> Iterator[tuple[str, dict]]:
    """(key, {ext: (member name, data offset, size, bytes)}) of consecutive members with one key."""
    key, group = None, {}
    try:
        tar = tarfile.open(shard, mode="r|")
    except tarfile.TarError as e:
        raise PipelineError(f"webdataset shard {shard}: not a tar file ({e})") from None
    with tar:
        try:
            for m in tar:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                if base.startswith(".") or base.startswith("__"):
                    continue
                k, ext = split_key(m.name)
                if k is None:
                    continue
                if k != key:
                    if key is not None:
                        yield key, group
                    key, group = k, {}
                if ext in group:
                    raise PipelineError(f"webdataset shard {shard}: member {m.name} repeats {key}.{ext}")
                last = field(ext)
                keep = last in IMAGE_EXTS or (last in ("txt", "json") and m.size <= MAX_TEXT)
                data = tar.extractfile(m).read() if keep else None
                group[ext] = (m.name, m.offset_data, m.size, data)
        except tarfile.TarError as e:
            raise PipelineError(f"webdataset shard {shard}: damaged tar ({e})") from None
    if key is not None:
        yield key, group


def items(paths: list[Path]) -> Iterator[Item]:
    for shard in paths:
        full = str(shard.resolve())
        n = 0
        for key, g in _samples(shard):
            n += 1
            exts = [e for e in g if field(e) in IMAGE_EXTS]
            caption = None
            txt, js = _first(g, ("txt",)), _first(g, ("json",))
            if txt is not None:
                name, _, _, data = g[txt]
                caption = decode_text(data, f"{shard}:{name}") if data is not None else None
            labels, tags, split = [], [], None
            if js is not None and g[js][3] is not None:
                import json

                name, _, _, data = g[js]
                where = f"{shard}:{name}"
                try:
                    obj = json.loads(decode_text(data, where))
                except ValueError as e:
                    raise PipelineError(f"{where}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
                labels, tags, split = labels_tags_split(obj, where)
            if not exts:
                yield Item(key=key, where=f"{shard}:{key}", image=None, caption=caption)
                continue
            name, offset, size, data = g[exts[0]]
            yield Item(key=key, where=f"{shard}:{name}", image=full, caption=caption, tags=tags, labels=labels,
                       split=split, member=name, offset=int(offset), size=int(size), data=data)
            for e in exts[1:]:  # KEY.jpg and KEY.png in one sample: the second is a duplicate key
                name2 = g[e][0]
                yield Item(key=key, where=f"{shard}:{name2}", image=full, caption=None)
        log.info("webdataset: %s: %d samples", shard, n)


def prepare(out_dir: str | Path, settings: dict, *, progress: bool = True) -> Path:
    """The prepare stage's adapter for ``source: webdataset``."""
    s = CollectionSettings.of(settings, "webdataset")
    paths = shard_paths(s.path)
    return prepare_items(out_dir, items(paths), s, "webdataset", settings["dataset"], progress=progress,
                         extra_meta={"shards": [str(p.resolve()) for p in paths]})
