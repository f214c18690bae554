"""MIRFlickr-25K adapter (pipeline.data.mirflickr25k) on tiny archives in the official layout.

The 30-image collection below is built so that each rule decides at least one image on its own;
the expected vocabulary, pairs and counts are worked out by hand in the comments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from pipeline.data import mirflickr25k as mf
from pipeline.data.download import Remote
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError


# Processed tags (meta/tags/tags{n}.txt), one per line; None = no tags file at all.
TAGS: dict[int, list[str] | None] = {
    **{n: ["sky"] for n in range(1, 11)},
    11: ["dog"], 12: ["dog"],            # dog: 2 images = exactly min_tag_count 2
    13: ["cat"],                         # cat: 1 image
    14: ["tree", "tree"],                # tree: repeated, still 1 image
    15: ["water"], 16: ["water"],        # water: 2 images
    17: ["rare1"], 18: ["rare2"], 19: ["rare3"], 20: ["rare4"],
    21: [], 22: [], 23: [], 24: [], 25: [],
    26: None,
    27: ["café"],                        # non-ASCII (UTF-8)
    28: ["sky", "café"],                 # file order, not vocabulary order
    29: ["sky", "rare5"],
    30: ["sky"],
}
# Image counts: sky 1-10,28,29,30 = 13; dog 2; water 2; café 2; cat 1; tree 1; rare* 1.
# Concept annotations ({concept}.txt); every other concept file is empty.
LABELS: dict[str, list[int]] = {
    "sky": list(range(1, 11)) + [29], "clouds": [1, 2], "animals": [11, 12, 13], "dog": [11],
    "water": [15, 17], "people": [21], "tree": [14], "night": [27], "indoor": [28],
}
R1 = {"dog_r1": [12, 16], "sky_r1": [30]}  # "relevant" subsets: NOT labels

# Hand-sorted concept order -> indices: animals 0, clouds 4, dog 5, indoor 9, night 12,
# people 13, sky 18, tree 22, water 23.
CONCEPTS_BY_HAND = ["animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food",
                    "indoor", "lake", "male", "night", "people", "plant_life", "portrait", "river",
                    "sea", "sky", "structures", "sunset", "transport", "tree", "water"]

# min_tag_count 2: vocabulary {café, dog, sky, water}: recomputed, in code-point order ("café" <
# "dog"); from doc/common_tags.txt (COMMON_TAGS below: the same tags), in the file's order.
VOCAB_2 = ["café", "dog", "sky", "water"]
VOCAB_2_FILE = ["sky", "café", "dog", "water"]
# kept = vocab tag AND label: 1-10, 11, 12, 15, 27, 28, 29 (16 pairs)
# dropped for no vocab tag: 13 14 17 18 19 20 21 22 23 24 25 26 (12)
# dropped for no label: 16 18 19 20 22 23 24 25 26 30 (10); for both: 18-20, 22-26 (8)
EXPECTED_2 = (
    [("im1", ["sky"], [4, 18]), ("im2", ["sky"], [4, 18])]
    + [(f"im{n}", ["sky"], [18]) for n in range(3, 11)]
    + [("im11", ["dog"], [0, 5]), ("im12", ["dog"], [0]), ("im15", ["water"], [23]),
       ("im27", ["café"], [12]), ("im28", ["sky", "café"], [9]), ("im29", ["sky"], [18])]
)
COUNTS_2 = {"pairs_total": 30, "no_vocab_tag": 12, "no_label": 10,
            "no_vocab_tag_and_no_label": 8, "kept": 16, "vocab_size": 4}
# min_tag_count 3: vocabulary {sky}; kept 1-10, 28, 29 (12); no sky: 11-27 (17);
# neither: 16 18 19 20 22 23 24 25 26 (9).
COUNTS_3 = {"pairs_total": 30, "no_vocab_tag": 17, "no_label": 10,
            "no_vocab_tag_and_no_label": 9, "kept": 12, "vocab_size": 1}

COMMON_TAGS = "sky 13\ncafé 2\ndog 2\nwater 2\n"  # "tag count" lines, as in the collection


def _jpeg(n: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (8 * n % 256, 255 - 8 * n % 256, n)).save(buf, format="JPEG")
    return buf.getvalue()


def mirflickr_build_archives(folder: Path, common_tags: str | None = COMMON_TAGS) -> dict[str, Path]:
    """The two official archives, in the real layout, for the collection above."""
    folder.mkdir(parents=True, exist_ok=True)
    images = folder / "mirflickr25k.zip"
    with zipfile.ZipFile(images, "w") as z:
        z.writestr("mirflickr/", "")
        for n, tags in TAGS.items():
            z.writestr(f"mirflickr/im{n}.jpg", _jpeg(n))
            if tags is not None:
                z.writestr(f"mirflickr/meta/tags/tags{n}.txt", "".join(t + "\n" for t in tags).encode())
            # raw tags must be ignored: reading them would put "rawonly" and more "dog" in
            z.writestr(f"mirflickr/meta/tags_raw/tags{n}.txt", "rawonly\nDog\ndog\n")
            z.writestr(f"mirflickr/meta/license/license{n}.txt", "Attribution License\n")
        if common_tags is not None:
            z.writestr("mirflickr/doc/common_tags.txt", common_tags.encode())
    annotations = folder / "mirflickr25k_annotations_v080.zip"
    with zipfile.ZipFile(annotations, "w") as z:
        z.writestr("README.txt", "MIRFLICKR-25000 annotations v080\n")
        for c in CONCEPTS_BY_HAND:
            nl = "\r\n" if c == "sky" else "\n"  # Windows line ends in one file
            z.writestr(f"{c}.txt", "".join(f"{n}{nl}" for n in LABELS.get(c, [])))
        for name, nums in R1.items():
            z.writestr(f"{name}.txt", "".join(f"{n}\n" for n in nums))
    return {"images": images, "annotations": annotations}


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    return mirflickr_build_archives(tmp_path_factory.mktemp("mirflickr_src"))


@pytest.fixture(scope="module")
def prepared(archives, tmp_path_factory) -> Path:
    """Prepared once from the archives (path: a folder holding the two zips)."""
    out = tmp_path_factory.mktemp("mirflickr_out")
    return mf.prepare(out, {"path": str(archives["images"].parent), "min_tag_count": 2},
                      progress=False)


def _pairs(manifest: Path) -> list[tuple]:
    return [(p.id, p.tags, p.labels) for p in read_manifest(manifest).pairs]


def test_concepts_are_the_24_sorted():
    assert mf.CONCEPTS == CONCEPTS_BY_HAND


def test_rule_helpers():
    assert mf.parse_tags("sky\nsky\r\nblue \n\n") == ["sky", "blue"]
    vocab, counts = mf.tag_vocabulary({1: ["a", "a"], 2: ["a", "b"], 3: ["b"], 4: ["c"]}, 2)
    assert vocab == ["a", "b"] and counts == {"a": 2, "b": 2, "c": 1}
    assert mf.tag_vocabulary({1: ["a"], 2: ["a"]}, 3)[0] == []
    assert mf.parse_concept_file("12\r\n3\n\n", "x.txt") == [12, 3]
    with pytest.raises(PipelineError, match=r"x.txt:2: not an image number: 'im3'"):
        mf.parse_concept_file("1\nim3\n", "x.txt")


def test_prepare_from_zips_vocabulary_pairs_counts(prepared, archives):
    m = read_manifest(prepared)
    assert m.classes == CONCEPTS_BY_HAND
    assert m.tag_vocab == VOCAB_2_FILE          # doc/common_tags.txt, file order
    assert _pairs(prepared) == EXPECTED_2
    for p in m.pairs:
        assert p.caption == " ".join(p.tags) and p.split is None
    prov = m.meta["provenance"]
    assert prov["counts"] == COUNTS_2
    assert prov["min_tag_count"] == 2
    assert m.meta["dataset"] == "mirflickr25k"
    # the source archives' checksums (our tiny zips: not the published ones)
    for key, path in archives.items():
        src = prov["sources"][key]
        assert src["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert src["md5"] == hashlib.md5(path.read_bytes()).hexdigest()
        assert src["size"] == path.stat().st_size and src["matches_published"] is False
    assert prov["common_tags_check"] == {"checked": True, "file_vocab_size": 4, "agree": True,
                                         "only_in_ours": 0, "only_in_file": 0,
                                         "count_differences": 0}


def test_each_rule_decides_on_its_own(prepared):
    ids = {p[0] for p in _pairs(prepared)}
    assert "im16" not in ids       # vocabulary tag (water) but no label: dropped by the label rule
    assert "im13" not in ids       # label (animals) but only a 1-image tag: dropped by the tag rule
    assert "im14" not in ids       # "tree" twice in one image counts once -> below 2
    assert "im11" in ids           # "dog" used by exactly min_tag_count images: kept
    assert "im30" not in ids       # listed only in sky_r1: _r1 files are not labels
    assert dict((i, lab) for i, _, lab in _pairs(prepared))["im12"] == [0]  # dog_r1 ignored


def test_images_copied_with_checksums(prepared):
    m = read_manifest(prepared)
    for i, p in enumerate(m.pairs):
        data = m.image_path(i).read_bytes()
        assert data == _jpeg(int(p.id[2:]))
        assert p.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(x.name for x in (prepared.parent / "images").iterdir()) == \
        sorted(f"{p.id}.jpg" for p in m.pairs)


def test_min_tag_count_3(archives, tmp_path):
    out = mf.prepare(tmp_path, {"path": str(archives["images"].parent), "min_tag_count": 3},
                     progress=False)
    m = read_manifest(out)
    assert m.tag_vocab == ["sky"]
    assert [p.id for p in m.pairs] == [f"im{n}" for n in list(range(1, 11)) + [28, 29]]
    assert m.pairs[10].tags == ["sky"] and m.pairs[10].caption == "sky"  # im28 loses café
    assert m.meta["provenance"]["counts"] == COUNTS_3


def test_rerun_is_deterministic_and_removes_stale_images(prepared, archives, tmp_path):
    settings = {"path": str(archives["images"].parent), "min_tag_count": 2}
    first = {f: (prepared.parent / f).read_bytes() for f in ("manifest.jsonl", "meta.json")}
    (prepared.parent / "images" / "im999.jpg").write_bytes(b"stale")
    (prepared.parent / "images" / "im1.jpg").write_bytes(b"corrupt")  # rewritten, not trusted
    again = mf.prepare(prepared.parent, settings, progress=False)
    assert again == prepared
    for f, data in first.items():
        assert (prepared.parent / f).read_bytes() == data
    assert not (prepared.parent / "images" / "im999.jpg").exists()
    assert (prepared.parent / "images" / "im1.jpg").read_bytes() == _jpeg(1)
    elsewhere = mf.prepare(tmp_path / "other", settings, progress=False)
    assert elsewhere.read_bytes() == first["manifest.jsonl"]


def test_path_to_extracted_folders(prepared, archives, tmp_path):
    src = tmp_path / "my copy"
    for key, sub in (("images", "."), ("annotations", "mirflickr25k_annotations_v080")):
        with zipfile.ZipFile(archives[key]) as z:
            z.extractall(src / sub)
    out = mf.prepare(tmp_path / "out", {"path": str(src), "min_tag_count": 2}, progress=False)
    assert out.read_bytes() == prepared.read_bytes()
    sources = json.loads((out.parent / "meta.json").read_text())["provenance"]["sources"]
    assert sources["images"] == {"folder": str(src / "mirflickr"), "origin": "path"}
    assert sources["annotations"]["folder"] == str(src / "mirflickr25k_annotations_v080")


def test_path_mixing_folder_and_zip(prepared, archives, tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    with zipfile.ZipFile(archives["images"]) as z:
        z.extractall(src)
    shutil.copy(archives["annotations"], src)
    out = mf.prepare(tmp_path / "out", {"path": str(src), "min_tag_count": 2}, progress=False)
    assert out.read_bytes() == prepared.read_bytes()


def _serve(monkeypatch, http_server, archives) -> None:
    sources = {}
    for key, path in archives.items():
        http_server.files[path.name] = path.read_bytes()
        sources[key] = Remote(http_server.url(path.name), path.name, size=path.stat().st_size,
                              sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(mf, "SOURCES", sources)


def test_download_through_http(prepared, archives, http_server, monkeypatch, tmp_path):
    _serve(monkeypatch, http_server, archives)
    out = mf.prepare(tmp_path, {"min_tag_count": 2, "seed": 7}, progress=False)
    assert out.read_bytes() == prepared.read_bytes()
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == \
        ["mirflickr25k.zip", "mirflickr25k_annotations_v080.zip"]
    prov = json.loads((tmp_path / "meta.json").read_text())["provenance"]
    assert prov["sources"]["images"]["matches_published"] is True
    assert prov["sources"]["images"]["origin"] == "download"
    assert len(http_server.requests) == 2
    mf.prepare(tmp_path, {"min_tag_count": 2}, progress=False)  # archives kept: no new request
    assert len(http_server.requests) == 2


def test_only_the_images_checksum_is_enforced():
    """The images zip's MD5 is the official one; the annotations zip's was measured on one copy."""
    assert mf.SOURCES["images"].checksum_official and mf.SOURCES["images"].md5
    ann = mf.SOURCES["annotations"]
    assert not ann.checksum_official and ann.md5 and ann.size == 207_220


def _serve_real_annotation_remote(monkeypatch, http_server, archives, size_delta: int = 0) -> bytes:
    """The images as in _serve; the annotations under the real Remote (its unofficial MD5, which
    our tiny archive does not have), with the tiny archive's size (+ size_delta)."""
    real = mf.SOURCES["annotations"]
    _serve(monkeypatch, http_server, archives)
    data = archives["annotations"].read_bytes()
    real = dataclasses.replace(real, url=http_server.url(archives["annotations"].name),
                               size=len(data) + size_delta)
    monkeypatch.setattr(mf, "SOURCES", {**mf.SOURCES, "annotations": real})
    return data


def test_annotations_of_the_right_size_but_another_md5_are_used(prepared, archives, http_server,
                                                                 monkeypatch, tmp_path, caplog):
    data = _serve_real_annotation_remote(monkeypatch, http_server, archives)
    with caplog.at_level(logging.INFO):
        out = mf.prepare(tmp_path, {"min_tag_count": 2}, progress=False)
    assert out.read_bytes() == prepared.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    assert f"md5 {md5} differs from the unofficial aa0138c79892b1b670184d142380948f" in caplog.text
    src = json.loads((tmp_path / "meta.json").read_text())["provenance"]["sources"]["annotations"]
    assert src["md5"] == md5 and src["size"] == len(data) and src["checksum"] == "unofficial"
    assert src["matches_published"] is True      # the size: all that is enforced
    assert src["md5_matches_unofficial"] is False


def test_annotations_of_the_wrong_size_are_refused(archives, http_server, monkeypatch, tmp_path):
    _serve_real_annotation_remote(monkeypatch, http_server, archives, size_delta=1)
    with pytest.raises(PipelineError, match=r"mirflickr25k_annotations_v080.zip: size mismatch") as e:
        mf.prepare(tmp_path, {"min_tag_count": 2}, progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "downloads" / "mirflickr25k_annotations_v080.zip").exists()


def test_download_dir_and_mirror(prepared, archives, monkeypatch, tmp_path):
    dead = {k: Remote(f"http://127.0.0.1:9/gone/{p.name}", p.name,
                      sha256=hashlib.sha256(p.read_bytes()).hexdigest()) for k, p in archives.items()}
    monkeypatch.setattr(mf, "SOURCES", dead)
    settings = {"min_tag_count": 2, "mirror": str(archives["images"].parent),
                "download_dir": str(tmp_path / "dl")}
    out = mf.prepare(tmp_path / "out", settings, progress=False)
    assert out.read_bytes() == prepared.read_bytes()
    assert (tmp_path / "dl" / "mirflickr25k.zip").is_file()


def test_vocabulary_is_doc_common_tags_when_present(prepared, caplog, archives, tmp_path):
    """Every public 20,015-pair pipeline indexes doc/common_tags.txt: its tags (with a count >=
    min_tag_count), in its order, are the vocabulary; the provenance says so."""
    m = read_manifest(prepared)
    assert m.tag_vocab == VOCAB_2_FILE
    assert m.meta["provenance"]["vocabulary"] == {
        "source": "doc/common_tags.txt", "file": "mirflickr/doc/common_tags.txt",
        "order": "file order", "note": None}
    with caplog.at_level(logging.INFO, logger="pipeline.data.mirflickr25k"):
        mf.prepare(tmp_path, {"path": str(archives["images"].parent), "min_tag_count": 2},
                   progress=False)
    assert "vocabulary: 4 tags from doc/common_tags.txt (count >= 2, file order)" in caplog.text


def test_common_tags_file_differing_from_the_recomputed_vocabulary_is_used(tmp_path, caplog):
    src = mirflickr_build_archives(tmp_path / "src", common_tags="sky 13\ndog 5\ncat 2\n")
    with caplog.at_level(logging.INFO, logger="pipeline.data.mirflickr25k"):
        out = mf.prepare(tmp_path / "out", {"path": str(src["images"].parent), "min_tag_count": 2},
                         progress=False)
    m = read_manifest(out)
    assert m.tag_vocab == ["sky", "dog", "cat"]
    # cat (1 image, labelled animals) now counts: im13 is kept; café and water no longer do
    ids = [p.id for p in m.pairs]
    assert ids == [f"im{n}" for n in list(range(1, 14)) + [28, 29]]
    assert m.pairs[12].tags == ["cat"] and m.pairs[13].tags == ["sky"]   # im13; im28 loses café
    check = m.meta["provenance"]["common_tags_check"]
    # file >= 2: {sky, dog, cat}; recomputed: {café, dog, sky, water}; dog's count 5 vs 2
    assert check == {"checked": True, "file_vocab_size": 3, "agree": False, "only_in_ours": 2,
                     "only_in_file": 1, "count_differences": 1}
    assert "recomputing it from meta/tags would give 4 tags (2 not in the file, 1 only in it; 1 of " \
        "the file's counts differ); the file's list is used" in caplog.text


def test_common_tags_without_counts(tmp_path, caplog):
    """One tag per line (no count column): the file is the vocabulary at the default threshold
    (the one it was made with); another min_tag_count cannot be applied to it: recomputed."""
    src = mirflickr_build_archives(tmp_path / "src", common_tags="dog\r\nsky\n\ncat\n")
    out = mf.prepare(tmp_path / "a", {"path": str(src["images"].parent)}, progress=False)
    m = read_manifest(out)
    assert m.tag_vocab == ["dog", "sky", "cat"]
    assert [p.id for p in m.pairs] == [f"im{n}" for n in list(range(1, 14)) + [28, 29]]
    assert m.meta["provenance"]["vocabulary"]["source"] == "doc/common_tags.txt"
    assert m.meta["provenance"]["common_tags_check"]["count_differences"] is None
    with caplog.at_level(logging.INFO, logger="pipeline.data.mirflickr25k"):
        out = mf.prepare(tmp_path / "b", {"path": str(src["images"].parent), "min_tag_count": 2},
                         progress=False)
    m = read_manifest(out)
    assert m.tag_vocab == VOCAB_2
    voc = m.meta["provenance"]["vocabulary"]
    assert voc["source"] == "recomputed" and voc["order"] == "code point"
    assert voc["note"] == "doc/common_tags.txt has no counts to apply min_tag_count 2 to"
    assert "vocabulary recomputed" in caplog.text and "has no counts" in caplog.text


def test_vocabulary_recomputed_without_common_tags(prepared, tmp_path, caplog):
    src = mirflickr_build_archives(tmp_path / "src", common_tags=None)
    with caplog.at_level(logging.INFO, logger="pipeline.data.mirflickr25k"):
        out = mf.prepare(tmp_path / "out", {"path": str(src["images"].parent), "min_tag_count": 2},
                         progress=False)
    m = read_manifest(out)
    assert m.tag_vocab == VOCAB_2                    # same tags, code-point order
    assert _pairs(out) == EXPECTED_2
    assert m.meta["provenance"]["vocabulary"] == {
        "source": "recomputed", "file": None, "order": "code point",
        "note": "no doc/common_tags.txt in " + str(src["images"])}
    assert m.meta["provenance"]["common_tags_check"] is None
    assert "vocabulary recomputed: 4 processed tags used by >= 2 images" in caplog.text


def test_min_tag_count_below_the_files_counts_is_recomputed(tmp_path):
    """The file lists only tags used by >= 2 images: min_tag_count 1 needs the recount."""
    src = mirflickr_build_archives(tmp_path / "src")
    out = mf.prepare(tmp_path / "out", {"path": str(src["images"].parent), "min_tag_count": 1},
                     progress=False)
    m = read_manifest(out)
    assert m.tag_vocab == sorted(["café", "cat", "dog", "rare1", "rare2", "rare3", "rare4", "rare5",
                                  "sky", "tree", "water"])
    assert m.meta["provenance"]["vocabulary"]["note"] == \
        "doc/common_tags.txt lists only tags used by >= 2 images, min_tag_count is 1"


def test_user_errors(archives, tmp_path):
    with pytest.raises(PipelineError, match="mirflickr25k: path .* is not a folder"):
        mf.prepare(tmp_path / "o", {"path": str(archives["images"])}, progress=False)
    with pytest.raises(PipelineError, match="found neither mirflickr25k.zip nor an extracted mirflickr/"):
        mf.prepare(tmp_path / "o", {"path": str(tmp_path)}, progress=False)
    for bad in (0, "20", True, 2.5):
        with pytest.raises(PipelineError, match="min_tag_count must be an integer >= 1"):
            mf.prepare(tmp_path / "o", {"min_tag_count": bad}, progress=False)

    src = tmp_path / "no_water"
    src.mkdir()
    shutil.copy(archives["images"], src)
    with zipfile.ZipFile(archives["annotations"]) as zin, \
            zipfile.ZipFile(src / "mirflickr25k_annotations_v080.zip", "w") as zout:
        for name in zin.namelist():
            if name != "water.txt":
                zout.writestr(name, zin.read(name))
    with pytest.raises(PipelineError, match=r"lacks the annotation file\(s\) water.txt"):
        mf.prepare(tmp_path / "o", {"path": str(src)}, progress=False)
    assert not (tmp_path / "o" / "manifest.jsonl").exists()
