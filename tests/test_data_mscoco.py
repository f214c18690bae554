"""The MS-COCO 2017 adapter on a tiny fixture in the real annotation formats (12 train + 5 val)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import download, mscoco
from pipeline.data.download import Remote
from pipeline.data.manifest import read_manifest
from pipeline.data.mscoco import choose_caption, normalize_caption, prepare
from pipeline.data.splits import split_indices
from pipeline.errors import PipelineError

# Categories as in the real files: ids 1..90 with gaps, listed here out of id order.
CATEGORIES = [{"supercategory": "animal", "id": 18, "name": "dog"},
              {"supercategory": "indoor", "id": 90, "name": "toothbrush"},
              {"supercategory": "person", "id": 1, "name": "person"},
              {"supercategory": "vehicle", "id": 3, "name": "car"},
              {"supercategory": "food", "id": 52, "name": "banana"}]
CLASSES = ["person", "car", "dog", "banana", "toothbrush"]          # sorted by id 1, 3, 18, 52, 90
CATEGORY_IDS = [1, 3, 18, 52, 90]

# image id -> category ids of its instance annotations (None: no annotation at all).
TRAIN = {9: [52, 52, 1], 25: None, 30: [90], 34: [18, 3], 36: [1], 42: [3], 49: [1, 90, 18],
         61: [18], 64: None, 71: [52], 72: [1], 73: [3, 1]}
VAL = {139: [1, 3], 285: None, 632: [18], 724: [90, 52], 776: [1]}
CROWD = {42}                      # image 42's only annotation is a crowd region (RLE segmentation)
ONLY_EMPTY_CAPTIONS = {36}        # all captions blank
NO_CAPTIONS = {72}                # no caption annotation at all
ONE_EMPTY_CAPTION = {776}         # one blank caption among normal ones

# Hand-computed from the tables above: labels = sorted indices into CLASSES.
EXPECTED_LABELS = {
    "val2017/000000000139": [0, 1], "val2017/000000000632": [2], "val2017/000000000724": [3, 4],
    "val2017/000000000776": [0],
    "train2017/000000000009": [0, 3], "train2017/000000000030": [4], "train2017/000000000034": [1, 2],
    "train2017/000000000042": [1], "train2017/000000000049": [0, 2, 4], "train2017/000000000061": [2],
    "train2017/000000000071": [3], "train2017/000000000073": [0, 1],
}
EXPECTED_ORDER = list(EXPECTED_LABELS)  # queries (val) then database (train), each by image id
EXPECTED_COUNTS = {
    "val2017": {"images": 5, "without_category": 1, "without_caption": 0, "kept": 4, "empty_captions": 1},
    "train2017": {"images": 12, "without_category": 2, "without_caption": 2, "kept": 8, "empty_captions": 2},
}
DROPPED = ["val2017/000000000285.jpg", "train2017/000000000025.jpg", "train2017/000000000036.jpg",
           "train2017/000000000064.jpg", "train2017/000000000072.jpg"]


def _fname(iid: int) -> str:
    return f"{iid:012d}.jpg"


def _jpeg(iid: int) -> bytes:
    colour = (iid * 37 % 256, iid * 91 % 256, iid * 13 % 256)
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _caption_texts(iid: int) -> list[tuple[int, str]]:
    """(annotation id, raw text): ids not in list order, messy whitespace, some blank."""
    if iid in NO_CAPTIONS:
        return []
    if iid in ONLY_EMPTY_CAPTIONS:
        return [(iid * 100 + 1, ""), (iid * 100 + 2, "  \n\t ")]
    n = 6 if iid % 2 else 5
    ids = [iid * 100 + (7 * j) % 11 for j in range(n)]   # e.g. 0, 7, 3, 10, 6, 2 (+ iid*100)
    out = [(a, f"  image {iid}\tcaption   {a % 100}\n") for a in ids]
    if iid in ONE_EMPTY_CAPTION:
        out.append((iid * 100 + 50, "   "))
    return out


def _expected_caption(iid: int, seed: int) -> str:
    """The documented rule, computed independently: non-empty, sorted by id, default_rng([seed, id])."""
    cands = sorted(a for a, t in _caption_texts(iid) if t.strip())
    k = int(np.random.default_rng([seed, iid]).integers(len(cands)))
    return f"image {iid} caption {cands[k] % 100}"


def _instances(split: str, table: dict, drop: set[int]) -> dict:
    images, anns = [], []
    ann_id = 1000 if split == "train2017" else 5000
    for iid in reversed(list(table)):                      # images listed out of id order
        if iid in drop:
            continue
        images.append({"license": 3, "file_name": _fname(iid), "coco_url": f"http://x/{_fname(iid)}",
                       "height": 6, "width": 8, "date_captured": "2013-11-14 16:28:13",
                       "flickr_url": "http://y", "id": iid})
        for cid in table[iid] or []:
            ann_id += 1
            if iid in CROWD:
                seg = {"counts": [0, 5, 43], "size": [6, 8]}
            else:
                seg = [[1.0, 1.0, 5.5, 1.0, 5.5, 4.25, 1.0, 4.25]]
            anns.append({"segmentation": seg, "area": 12.5, "iscrowd": int(iid in CROWD),
                         "image_id": iid, "bbox": [1.0, 1.0, 4.5, 3.25], "category_id": cid, "id": ann_id})
    return {"info": {"description": "COCO 2017 Dataset (test fixture)", "year": 2017},
            "licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 3, "name": "CC BY"}],
            "images": images, "annotations": anns[::-1], "categories": CATEGORIES}


def _captions(split: str, table: dict, drop: set[int], shuffle: bool) -> dict:
    inst = _instances(split, table, drop)
    anns = [{"image_id": iid, "id": a, "caption": t}
            for iid in table if iid not in drop for a, t in _caption_texts(iid)]
    if shuffle:
        anns = [anns[j] for j in np.random.default_rng(123).permutation(len(anns))]
    return {"info": inst["info"], "licenses": inst["licenses"], "images": inst["images"], "annotations": anns}


def make_coco(root: Path, *, drop: set[int] = frozenset(), shuffle: bool = False) -> Path:
    """Extracted layout: root/annotations/*.json, root/train2017/*.jpg, root/val2017/*.jpg."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, table in (("train2017", TRAIN), ("val2017", VAL)):
        inst = _instances(split, table, set(drop))
        if shuffle:
            inst["annotations"] = inst["annotations"][1::2] + inst["annotations"][0::2]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(inst))
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps(_captions(split, table, set(drop), shuffle)))
        (root / split).mkdir(exist_ok=True)
        for iid in table:
            (root / split / _fname(iid)).write_bytes(_jpeg(iid))
    return root


def zip_coco(src: Path, dst: Path) -> Path:
    """The official archive layout: train2017.zip (train2017/...), annotations_trainval2017.zip, ..."""
    dst.mkdir(parents=True, exist_ok=True)
    for name, folder in (("annotations_trainval2017.zip", "annotations"), ("train2017.zip", "train2017"),
                         ("val2017.zip", "val2017")):
        with zipfile.ZipFile(dst / name, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{folder}/", b"")
            for p in sorted((src / folder).iterdir(), reverse=True):
                zf.write(p, f"{folder}/{p.name}")
    return dst


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def coco_zips(tmp_path_factory, coco) -> Path:
    return zip_coco(coco, tmp_path_factory.mktemp("coco_zips"))


@pytest.fixture(scope="module")
def from_folders(tmp_path_factory, coco):
    return read_manifest(prepare(tmp_path_factory.mktemp("out_f"), {"path": str(coco), "seed": 0},
                                 progress=False))


@pytest.fixture(scope="module")
def from_zips(tmp_path_factory, coco_zips):
    return read_manifest(prepare(tmp_path_factory.mktemp("out_z"), {"path": str(coco_zips), "seed": 0},
                                 progress=False))


def _core(m) -> list[tuple]:
    return [(p.id, p.caption, p.labels, p.split, p.sha256, p.tags) for p in m.pairs]


# --------------------------------------------------------------------------------------------
# Captions


def test_normalize_caption():
    assert normalize_caption("  A  man\n riding\ta horse. ") == "A man riding a horse."
    assert normalize_caption(" \n ") == ""
    assert normalize_caption(None) == ""


def test_choose_caption_rule():
    caps = [(30, "c"), (10, " a "), (20, "b\n"), (40, "   ")]
    idx = int(np.random.default_rng([7, 555]).integers(3))
    assert choose_caption(caps, 7, 555) == ["a", "b", "c"][idx]
    assert choose_caption(caps[::-1], 7, 555) == choose_caption(caps, 7, 555)  # input order irrelevant
    assert choose_caption([(1, ""), (2, " \t")], 0, 1) is None
    assert choose_caption([], 0, 1) is None
    # over many images, every candidate gets picked: the index really comes from the generator
    picks = {choose_caption(caps, 0, i) for i in range(60)}
    assert picks == {"a", "b", "c"}


# --------------------------------------------------------------------------------------------
# The prepared data set


def test_classes_in_category_id_order(from_folders):
    assert from_folders.classes == CLASSES
    assert from_folders.meta["category_ids"] == CATEGORY_IDS
    assert from_folders.tag_vocab is None


def test_labels_order_and_drop_rules(from_folders):
    assert [p.id for p in from_folders.pairs] == EXPECTED_ORDER
    assert {p.id: p.labels for p in from_folders.pairs} == EXPECTED_LABELS
    y = from_folders.label_matrix()
    assert y.shape == (12, 5) and y[4].tolist() == [1, 0, 0, 1, 0]  # train 9: person + banana
    assert all(p.tags == [] for p in from_folders.pairs)


def test_counts_in_provenance(from_folders):
    assert from_folders.meta["provenance"]["counts"] == EXPECTED_COUNTS
    assert from_folders.meta["provenance"]["seed"] == 0
    assert from_folders.meta["dataset"] == "mscoco"


def test_fixed_split_assignment(from_folders):
    splits = [p.split for p in from_folders.pairs]
    assert splits == ["query"] * 4 + ["database"] * 8
    idx = split_indices(len(splits), n_query=4, n_train=3, seed=0, fixed=splits)
    assert idx["query"].tolist() == [0, 1, 2, 3]
    assert idx["database"].tolist() == list(range(4, 12))
    assert set(idx["train"].tolist()) <= set(range(4, 12))


def test_caption_choice_follows_rule(from_folders):
    for p in from_folders.pairs:
        iid = int(p.id.rsplit("/", 1)[1])
        assert p.caption == _expected_caption(iid, 0), p.id


def test_other_seed_changes_some_captions(coco, from_folders, tmp_path):
    other = read_manifest(prepare(tmp_path / "o", {"path": str(coco), "seed": 1, "hash_images": False},
                                  progress=False))
    a = {p.id: p.caption for p in from_folders.pairs}
    b = {p.id: p.caption for p in other.pairs}
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a) >= 1
    for p in other.pairs:
        assert p.caption == _expected_caption(int(p.id.rsplit("/", 1)[1]), 1)
        assert p.sha256 is None
    assert [p.labels for p in other.pairs] == [p.labels for p in from_folders.pairs]


def test_caption_unchanged_when_images_removed_or_reordered(from_folders, tmp_path):
    """Removing image 34 (and its annotations) or shuffling the json order changes no other pair."""
    smaller = make_coco(tmp_path / "c1", drop={34, 632}, shuffle=True)
    m = read_manifest(prepare(tmp_path / "o1", {"path": str(smaller), "seed": 0}, progress=False))
    full = {p.id: p.to_json() for p in from_folders.pairs}
    got = {p.id: p.to_json() for p in m.pairs}
    assert set(full) - set(got) == {"train2017/000000000034", "val2017/000000000632"}
    for k, v in got.items():
        assert {**v, "image": None} == {**full[k], "image": None}
    reordered = make_coco(tmp_path / "c2", shuffle=True)
    m2 = read_manifest(prepare(tmp_path / "o2", {"path": str(reordered), "seed": 0}, progress=False))
    assert _core(m2) == _core(from_folders)


# --------------------------------------------------------------------------------------------
# Images: in place (folders) and extracted (zips)


def test_folders_referenced_in_place(coco, from_folders, tmp_path):
    assert not (from_folders.root / "images").exists()
    for i, p in enumerate(from_folders.pairs):
        split, stem = p.id.split("/")
        assert Path(p.image).is_absolute()
        assert from_folders.image_path(i) == coco / split / f"{stem}.jpg"    # root / absolute = absolute
        assert p.sha256 == hashlib.sha256((coco / split / f"{stem}.jpg").read_bytes()).hexdigest()
    assert Path("/some/root") / "/abs/x.jpg" == Path("/abs/x.jpg")
    sources = from_folders.meta["provenance"]["sources"]
    assert sources["train2017"]["path"] == str(coco / "train2017")
    ann = coco / "annotations" / "instances_val2017.json"
    assert sources["instances_val2017.json"]["sha256"] == hashlib.sha256(ann.read_bytes()).hexdigest()
    with Image.open(from_folders.image_path(0)) as im:
        assert im.size == (8, 6)


def test_relative_path_stored_absolute(coco, monkeypatch, tmp_path):
    monkeypatch.chdir(coco.parent)
    m = read_manifest(prepare(tmp_path / "o", {"path": coco.name, "seed": 0, "hash_images": False},
                              progress=False))
    assert m.pairs[0].image == str(coco / "val2017" / "000000000139.jpg")


def test_zips_equal_folders_and_extract_only_kept(from_zips, from_folders, coco_zips):
    assert _core(from_zips) == _core(from_folders)
    assert from_zips.classes == from_folders.classes
    assert from_zips.meta["provenance"]["counts"] == EXPECTED_COUNTS
    root = from_zips.root
    extracted = sorted(p.relative_to(root / "images").as_posix() for p in (root / "images").rglob("*")
                       if p.is_file())
    assert extracted == sorted(f"{p.id}.jpg" for p in from_zips.pairs)
    assert not any((root / "images" / d).exists() for d in DROPPED)
    for i, p in enumerate(from_zips.pairs):
        assert p.image == f"images/{p.id}.jpg"
        assert hashlib.sha256(from_zips.image_path(i).read_bytes()).hexdigest() == p.sha256
    src = from_zips.meta["provenance"]["sources"]
    for name in ("train2017.zip", "val2017.zip", "annotations_trainval2017.zip"):
        assert src[name]["sha256"] == hashlib.sha256((coco_zips / name).read_bytes()).hexdigest()
        assert src[name]["official_sha256"] is False


def test_deterministic_bytes(coco_zips, tmp_path):
    a = prepare(tmp_path / "a", {"path": str(coco_zips), "seed": 0}, progress=False).parent
    b = prepare(tmp_path / "b", {"path": str(coco_zips), "seed": 0}, progress=False).parent
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_rerun_repairs_and_cleans_extracted_images(coco_zips, from_zips, tmp_path):
    out = tmp_path / "o"
    prepare(out, {"path": str(coco_zips), "seed": 0}, progress=False)
    bad = out / "images" / "train2017" / "000000000009.jpg"
    good = bad.read_bytes()
    bad.write_bytes(b"x" * len(good))                          # same size, wrong CRC
    stale = out / "images" / "train2017" / "000000000025.jpg"  # a dropped image
    stale.write_bytes(b"old")
    tmp = out / "images" / "val2017" / ".000000000139.jpg.abc.tmp.jpg"  # a killed write
    tmp.write_bytes(b"partial")
    m = read_manifest(prepare(out, {"path": str(coco_zips), "seed": 0}, progress=False))
    assert bad.read_bytes() == good
    assert not stale.exists() and not tmp.exists()
    assert _core(m) == _core(from_zips)


def test_mixed_layout(coco, tmp_path):
    """Annotations as the official zip, images as extracted folders."""
    mixed = tmp_path / "mixed"
    zip_coco(coco, tmp_path / "z")
    mixed.mkdir()
    (mixed / "annotations_trainval2017.zip").write_bytes((tmp_path / "z" / "annotations_trainval2017.zip").read_bytes())
    for split in ("train2017", "val2017"):
        (mixed / split).symlink_to(coco / split, target_is_directory=True)
    m = read_manifest(prepare(tmp_path / "o", {"path": str(mixed), "seed": 0}, progress=False))
    assert [p.id for p in m.pairs] == EXPECTED_ORDER
    assert m.pairs[0].image == str(mixed / "val2017" / "000000000139.jpg")


# --------------------------------------------------------------------------------------------
# Download


def _serve(http_server, zips: Path) -> dict[str, Remote]:  # noqa: F811
    remotes = {}
    for key, name in (("annotations", "annotations_trainval2017.zip"), ("val2017", "val2017.zip"),
                      ("train2017", "train2017.zip")):
        data = (zips / name).read_bytes()
        http_server.files[f"coco/{name}"] = data
        remotes[key] = Remote(url=http_server.url(f"coco/{name}"), filename=name,
                              sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return remotes


def test_download_through_http(http_server, coco_zips, from_zips, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)
    remotes = _serve(http_server, coco_zips)
    monkeypatch.setattr(mscoco, "SOURCES", remotes)
    out = tmp_path / "o"
    m = read_manifest(prepare(out, {"seed": 0}, progress=False))
    assert _core(m) == _core(from_zips)
    for r in remotes.values():
        assert (out / "downloads" / r.filename).read_bytes() == (coco_zips / r.filename).read_bytes()
        src = m.meta["provenance"]["sources"][r.filename]
        assert src["sha256"] == r.sha256 and src["official_sha256"] is True
        assert src["path"] == str(out / "downloads" / r.filename)
    assert sorted(q.path for q in http_server.requests) == sorted(f"coco/{r.filename}" for r in remotes.values())
    # a rerun finds the verified archives: no request
    n = len(http_server.requests)
    prepare(out, {"seed": 0, "download_dir": str(out / "downloads")}, progress=False)
    assert len(http_server.requests) == n


def test_download_dropped_connection_resumes(http_server, coco_zips, from_zips, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(mscoco, "SOURCES", _serve(http_server, coco_zips))
    http_server.drop_after = 100
    m = read_manifest(prepare(tmp_path / "o", {"seed": 0, "download_dir": str(tmp_path / "dl")},
                              progress=False))
    assert _core(m) == _core(from_zips)
    assert any(q.range == "bytes=100-" and q.status == 206 for q in http_server.requests)


def test_download_from_mirror_folder(coco_zips, from_zips, monkeypatch, tmp_path):
    dead = {k: Remote(url=f"http://127.0.0.1:9/{r.filename}", filename=r.filename,
                      sha256=hashlib.sha256((coco_zips / r.filename).read_bytes()).hexdigest())
            for k, r in mscoco.SOURCES.items()}
    monkeypatch.setattr(mscoco, "SOURCES", dead)
    m = read_manifest(prepare(tmp_path / "o", {"seed": 0, "mirror": str(coco_zips)}, progress=False))
    assert _core(m) == _core(from_zips)


def test_official_sources():
    s = mscoco.SOURCES
    assert set(s) == {"annotations", "train2017", "val2017"}
    assert s["train2017"].url == "http://images.cocodataset.org/zips/train2017.zip"
    assert s["val2017"].url == "http://images.cocodataset.org/zips/val2017.zip"
    assert s["annotations"].url == "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
    for r in s.values():
        assert r.url.endswith("/" + r.filename)
        assert len(r.sha256) == 64 and len(r.md5) == 32 and r.size > 0


# --------------------------------------------------------------------------------------------
# Errors: one line each, naming what and where


def _err(tmp_path, path, match, **extra) -> None:
    with pytest.raises(PipelineError, match=match) as e:
        prepare(tmp_path / "out", {"path": str(path), "seed": 0, **extra}, progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_error_missing_pieces(coco, tmp_path):
    _err(tmp_path, tmp_path / "nowhere", "is not a folder")
    part = tmp_path / "part"
    (part / "annotations").mkdir(parents=True)
    _err(tmp_path, part, "no annotations under")
    for f in (coco / "annotations").iterdir():
        (part / "annotations" / f.name).write_bytes(f.read_bytes())
    (part / "val2017").mkdir()
    _err(tmp_path, part, "no train2017 images under")
    (part / "train2017").mkdir()
    _err(tmp_path, part, r"missing image .*000000000139\.jpg")


def test_error_bad_json(coco, tmp_path):
    bad = tmp_path / "bad"
    make_coco(bad)
    p = bad / "annotations" / "instances_val2017.json"
    p.write_text(p.read_text()[:200])
    _err(tmp_path, bad, "cannot read instances_val2017.json")
    p.write_text(json.dumps({"images": []}))
    _err(tmp_path, bad, "not a COCO annotation file")


def test_error_unknown_category_and_image(coco, tmp_path):
    bad = make_coco(tmp_path / "bad")
    p = bad / "annotations" / "instances_train2017.json"
    d = json.loads(p.read_text())
    d2 = copy.deepcopy(d)
    d2["annotations"][0]["category_id"] = 2
    p.write_text(json.dumps(d2))
    _err(tmp_path, bad, "unknown category 2")
    d2 = copy.deepcopy(d)
    d2["annotations"][0]["image_id"] = 999
    p.write_text(json.dumps(d2))
    _err(tmp_path, bad, "unknown image 999")
    d2 = copy.deepcopy(d)
    d2["images"][0]["file_name"] = "../../etc/passwd"
    p.write_text(json.dumps(d2))
    _err(tmp_path, bad, "bad file_name")
    d2 = copy.deepcopy(d)
    d2["categories"][0]["name"] = "puppy"
    p.write_text(json.dumps(d2))
    _err(tmp_path, bad, "categories differ from the other split's")
    d2 = copy.deepcopy(d)
    d2["annotations"][0]["category_id"] = [1]
    p.write_text(json.dumps(d2))
    _err(tmp_path, bad, r"unknown category \[1\]")


def test_error_bad_zip_and_seed(coco, coco_zips, tmp_path):
    z = tmp_path / "z"
    z.mkdir()
    for f in coco_zips.iterdir():
        (z / f.name).write_bytes(f.read_bytes())
    _err(tmp_path, z, "seed must be a non-negative integer", seed=-1)
    _err(tmp_path, z, "hash_images must be true or false", hash_images="no")
    (z / "val2017.zip").write_bytes(b"not a zip")
    _err(tmp_path, z, r"val2017\.zip: not a readable zip archive")
