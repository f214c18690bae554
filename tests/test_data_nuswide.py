"""NUS-WIDE adapter on a tiny fixture in the official formats, with hand-computed expectations.

The fixture: 40 images, 12 concepts, a 15-tag list. Its positives (written out below) give the
concept counts sky 10, clouds 9, person 8, water 7, animal 6, zebra 6, grass 3, window 2, lake 1,
plants 1, buildings 0, toy 0. With ``n_concepts: 5`` the tie animal/zebra (6 each) goes to
``animal`` by name, although zebra comes first in Concepts81.txt; the kept rows are then 0..33
(sky 0-9, clouds 5-13, person 14-21, water 22-28, animal 0 and 29-33); rows 34-39 have zebra only
among their frequent concepts and are dropped. Images of rows 2 and 11 (kept) and 35 (dropped by
the concept rule anyway) are missing; row 3's image is corrupt (extraction's business). Rows 5, 7
and 36 have no tag.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from pipeline.data import nuswide
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError

N = 40
CONCEPTS = ["zebra", "sky", "clouds", "animal", "person", "water", "lake", "grass",
            "buildings", "window", "plants", "toy"]
POSITIVES = {
    "sky": list(range(0, 10)), "clouds": list(range(5, 14)), "person": list(range(14, 22)),
    "water": list(range(22, 29)), "animal": [0, 29, 30, 31, 32, 33],
    "zebra": [34, 35, 36, 37, 38, 39], "grass": [1, 2, 3], "window": [35, 36], "lake": [34],
    "plants": [4], "buildings": [], "toy": [],
}
VOCAB = ["sunset", "beach", "dog", "cat", "nikon", "2008", "blue", "tree", "city", "night",
         "snow", "red", "bird", "flower", "car"]
TAGS = {0: [0, 2, 14], 5: [], 7: [], 36: [], 13: list(range(15)), 29: [6]}
MISSING = {2, 11, 35}
CORRUPT = 3
DIRS = ["actor", "beach", "sky"]


def tag_cols(i: int) -> list[int]:
    return TAGS.get(i, sorted({i % 15, (3 * i + 1) % 15}))


def rel(i: int) -> str:
    return f"{DIRS[i % 3]}/{i:04d}_{1000 + i}.jpg"


def jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (6 * i, 255 - 6 * i, 100)).save(buf, format="JPEG")
    return buf.getvalue()


def official_files() -> dict[str, bytes]:
    """The metadata files, keyed by their path in the official layout (Windows line ends where
    the originals have them)."""
    files = {
        "ImageList/Imagelist.txt": "".join(rel(i).replace("/", "\\") + "\r\n" for i in range(N)).encode(),
        "ConceptsList/Concepts81.txt": "".join(c + "\r\n" for c in CONCEPTS).encode(),
        "NUS_WID_Tags/TagList1k.txt": "".join(t + "\n" for t in VOCAB).encode(),
        # rows of tab-separated 0/1 with a trailing tab, and a trailing blank line
        "NUS_WID_Tags/AllTags1k.txt": ("".join(
            "".join(("1" if j in tag_cols(i) else "0") + "\t" for j in range(len(VOCAB))) + "\n"
            for i in range(N)) + "\n").encode(),
    }
    for c in CONCEPTS:
        files[f"Groundtruth/AllLabels/Labels_{c}.txt"] = "".join(
            ("1" if i in POSITIVES[c] else "0") + "\n" for i in range(N)).encode()
    # a train/test file as in the real Groundtruth.zip: never read
    files["Groundtruth/TrainTestLabels/Labels_sky_Train.txt"] = b"1\n" * 5
    return files


ZIPS = {"ImageList.zip": "ImageList/", "ConceptsList.zip": "ConceptsList/",
        "Groundtruth.zip": "Groundtruth/", "NUS_WID_Tags.zip": "NUS_WID_Tags/"}


def zip_bytes(prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in sorted(official_files().items()):
            if name.startswith(prefix):
                # Groundtruth.zip holds AllLabels/ and TrainTestLabels/ at its top level
                z.writestr(name[len("Groundtruth/"):] if prefix == "Groundtruth/" else name, data)
    return buf.getvalue()


def bundle_bytes(top: str = "NUS-WIDE/") -> bytes:
    """The current NUS-WIDE.zip: Groundtruth/ and ConceptsList/ under a top folder; no ImageList."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in sorted(official_files().items()):
            if name.startswith(("Groundtruth/", "ConceptsList/")):
                z.writestr(top + name, data)
    return buf.getvalue()


URLS_HEADER = "%%%%%%%%%%Photo_file    Photo_id    url_Large   url_Middle   url_Small  url_Original%%%%%"


def urls_txt(n: int = N, header: str = URLS_HEADER) -> bytes:
    """NUS-WIDE-urls.txt for the first ``n`` images, in image-list order (some without URL)."""
    rows = [header]
    for i in range(n):
        win = "C:\\ImageData\\Flickr\\" + rel(i).replace("/", "\\")
        urls = "null  null  null  null" if i % 7 == 3 else f"http://f/l{i}.jpg  http://f/m{i}.jpg  null  null"
        rows.append(f"{win}  {1000 + i}  {urls}")
    return ("\r\n".join(rows) + "\r\n").encode()


def write_current_layout(root: Path, zipped: bool, urls: bytes | None = None) -> Path:
    """The current distribution: NUS-WIDE.zip (top folder NUS-WIDE/) and NUS_WID_Tags.zip, or
    their extracted folders; optionally NUS-WIDE-urls.txt; no ImageList."""
    root.mkdir(parents=True, exist_ok=True)
    if zipped:
        (root / "NUS-WIDE.zip").write_bytes(bundle_bytes())
        (root / "NUS_WID_Tags.zip").write_bytes(zip_bytes("NUS_WID_Tags/"))
    else:
        for name, data in official_files().items():
            if not name.startswith("ImageList/"):
                target = root / ("NUS-WIDE/" + name if not name.startswith("NUS_WID_Tags/") else name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    if urls is not None:
        (root / "NUS-WIDE-urls.txt").write_bytes(urls)
    return root


def write_metadata(root: Path, zipped: bool) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if zipped:
        for name, prefix in ZIPS.items():
            (root / name).write_bytes(zip_bytes(prefix))
    else:
        for name, data in official_files().items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    return root


def write_images(root: Path) -> Path:
    """The authors' layout: ROOT/Flickr/<dir>/<file>; returns ROOT."""
    for i in range(N):
        if i in MISSING:
            continue
        p = root / "Flickr" / rel(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"not a jpeg at all" if i == CORRUPT else jpeg(i))
    return root


@pytest.fixture(scope="module")
def nus(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("nus")
    return {"zips": write_metadata(base / "zips", True), "folder": write_metadata(base / "folder", False),
            "images": write_images(base / "imgs")}


def settings(nus, **kw) -> dict:
    s = {"path": str(nus["zips"]), "images": str(nus["images"]), "n_concepts": 5}
    s.update(kw)
    return s


def lines(manifest: Path) -> list[dict]:
    return [json.loads(s) for s in manifest.read_text().splitlines()]


# --------------------------------------------------------------------------------------------


def test_normalize_image_path():
    assert nuswide.normalize_image_path("actor\\0001_2124494179.jpg\r") == "actor/0001_2124494179.jpg"
    assert nuswide.normalize_image_path(r"C:\ImageData\Flickr\actor\0001_2124494179.jpg") == \
        "actor/0001_2124494179.jpg"
    assert nuswide.normalize_image_path("Flickr/sky/x.jpg") == "sky/x.jpg"
    with pytest.raises(PipelineError):
        nuswide.normalize_image_path("..\\..\\etc\\passwd")


def test_top_concepts_tie_broken_by_name_not_file_order():
    counts = [6, 10, 9, 6, 8, 7]           # zebra, sky, clouds, animal, person, water
    names = ["zebra", "sky", "clouds", "animal", "person", "water"]
    assert [names[j] for j in nuswide.top_concepts(names, counts, 5)] == \
        ["sky", "clouds", "person", "water", "animal"]
    assert [names[j] for j in nuswide.top_concepts(names, counts, 6)][-1] == "zebra"


BASE = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/"


def test_sources_are_the_current_official_locations():
    """The old host (dl.nextcenter.org) is dead; the archives are on the university's site, and
    the current bundle NUS-WIDE.zip is the fallback for the concepts and the ground truth."""
    assert {k: r.url for k, r in nuswide.SOURCES.items()} == {
        "imagelist": BASE + "ImageList.zip", "concepts": BASE + "ConceptsList.zip",
        "groundtruth": BASE + "Groundtruth.zip", "tags": BASE + "NUS_WID_Tags.zip",
        "urls": BASE + "NUS-WIDE-urls.rar", "lowlevel": BASE + "Low_Level_Features.rar"}
    remotes = list(nuswide.SOURCES.values()) + [r for alts in nuswide.ALTERNATIVES.values() for r in alts]
    assert all(r.url.endswith("/" + r.filename) and "nextcenter" not in r.url for r in remotes)
    assert all(r.sha256 is None and r.md5 is None and r.size is None for r in remotes)
    for key in ("concepts", "groundtruth"):
        assert [r.filename for r in nuswide.ALTERNATIVES[key]][0] == "NUS-WIDE.zip"


def test_prepare_protocol_from_zips(nus, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="pipeline.data.nuswide"):
        manifest = nuswide.prepare(out, settings(nus), progress=False)
    assert manifest == out / "manifest.jsonl"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == ["sky", "clouds", "person", "water", "animal"]
    assert meta["tag_vocab"] == VOCAB                       # all 15, file order
    prov = meta["provenance"]
    assert prov["counts"] == {"total": 40, "kept_by_concepts": 34, "missing_image": 2, "final": 32,
                              "no_tags": 2}
    assert prov["concept_counts"] == {"sky": 10, "clouds": 9, "person": 8, "water": 7, "animal": 6}
    assert prov["all_concept_counts"]["zebra"] == 6 and prov["all_concept_counts"]["toy"] == 0
    assert prov["first_missing_images"] == [rel(2), rel(11)]
    # the log names the chosen concepts and the missing images
    text = caplog.text
    assert "sky (10), clouds (9), person (8), water (7), animal (6)" in text
    assert f"2 of 34 pairs have no image in {nus['images']} (first: {rel(2)})" in text

    rows = lines(manifest)
    ids = [r["id"] for r in rows]
    assert ids == [f"{i:06d}" for i in range(34) if i not in (2, 11)]  # Imagelist order, 0-based rows
    by_id = {r["id"]: r for r in rows}
    r0 = by_id["000000"]
    assert r0["labels"] == [0, 4]                            # sky, animal
    assert r0["tags"] == ["sunset", "dog", "car"] and r0["caption"] == "sunset dog car"
    assert r0["image"] == f"images/{rel(0)}" and r0["split"] is None
    assert by_id["000005"]["labels"] == [0, 1] and by_id["000005"]["tags"] == [] \
        and by_id["000005"]["caption"] == ""                 # no tag: kept
    assert by_id["000013"]["labels"] == [1] and by_id["000013"]["tags"] == VOCAB
    assert by_id["000029"]["labels"] == [4] and by_id["000029"]["tags"] == ["blue"]
    # row 1: sky + grass (grass not a class); tags {1 % 15, 4 % 15} = beach, nikon
    assert by_id["000001"]["labels"] == [0] and by_id["000001"]["tags"] == ["beach", "nikon"]
    assert "000003" in by_id                                 # corrupt image: left to extraction
    assert not any(i in by_id for i in ("000034", "000035", "000039"))  # zebra only: dropped

    # images are symlinks into the image folder; hashes are of the image bytes
    m = read_manifest(manifest)
    k = [p.id for p in m.pairs].index("000000")
    assert (out / "images" / rel(0)).is_symlink()
    assert m.image_path(k).read_bytes() == jpeg(0)
    assert m.pairs[k].sha256 == hashlib.sha256(jpeg(0)).hexdigest()
    assert m.label_matrix().shape == (32, 5)
    # the text vector over tag_vocab is the pair's official AllTags1k row
    from pipeline.features.text import tag_vectors

    vec = tag_vectors([p.tags for p in m.pairs], m.tag_vocab)
    for p, row in zip(m.pairs, vec):
        assert list(map(int, row)) == [int(j in tag_cols(int(p.id))) for j in range(15)]


def test_extracted_folder_and_zips_give_identical_manifests(nus, tmp_path):
    a = nuswide.prepare(tmp_path / "a", settings(nus), progress=False)
    b = nuswide.prepare(tmp_path / "b", settings(nus, path=str(nus["folder"])), progress=False)
    again = nuswide.prepare(tmp_path / "a", settings(nus), progress=False)   # rerun in place
    assert a.read_bytes() == b.read_bytes() == again.read_bytes()
    srcs = json.loads((tmp_path / "b" / "meta.json").read_text())["provenance"]["sources"]
    assert "AllTags1k.txt" in srcs and srcs["AllTags1k.txt"] == hashlib.sha256(
        official_files()["NUS_WID_Tags/AllTags1k.txt"]).hexdigest()


def test_all_concepts_keeps_every_labelled_row(nus, tmp_path):
    m = nuswide.prepare(tmp_path / "o", settings(nus, n_concepts=12, hash_images=False), progress=False)
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["classes"][:7] == ["sky", "clouds", "person", "water", "animal", "zebra", "grass"]
    assert meta["classes"][-2:] == ["buildings", "toy"]         # 0 positives, by name
    # every row has a label; missing 2, 11, 35; no tags: 5, 7, 36
    assert meta["provenance"]["counts"] == {"total": 40, "kept_by_concepts": 40, "missing_image": 3,
                                            "final": 37, "no_tags": 3}
    assert all(r["sha256"] is None for r in lines(m))


def test_images_folder_may_be_the_flickr_tree_itself_and_missing_error(nus, tmp_path):
    s = settings(nus, images=str(nus["images"] / "Flickr"), images_mode="absolute")
    m = nuswide.prepare(tmp_path / "o", s, progress=False)
    man = read_manifest(m)
    assert Path(man.pairs[0].image).is_absolute()
    # pathlib keeps an absolute right-hand side: Manifest.image_path returns it unchanged
    assert man.image_path(0) == Path(man.pairs[0].image) == (nus["images"] / "Flickr" / rel(0)).absolute()
    assert not (tmp_path / "o" / "images").exists()
    with pytest.raises(PipelineError, match=r"2 of 34 pairs have no image in .* \(first: "
                                            + rel(2) + r"\); missing_image: error"):
        nuswide.prepare(tmp_path / "e", settings(nus, missing_image="error"), progress=False)
    assert not (tmp_path / "e" / "manifest.jsonl").exists()


def test_copy_mode(nus, tmp_path):
    m = nuswide.prepare(tmp_path / "o", settings(nus, images_mode="copy"), progress=False)
    p = tmp_path / "o" / "images" / rel(1)
    assert p.is_file() and not p.is_symlink() and p.read_bytes() == jpeg(1)
    assert m.read_bytes() == nuswide.prepare(tmp_path / "s", settings(nus), progress=False).read_bytes()


@pytest.mark.parametrize("name, data, match", [
    ("AllLabels/Labels_sky.txt", b"1\n" * 39, r"Labels_sky.txt has 39 rows, .*Imagelist.txt 40"),
    ("AllLabels/Labels_sky.txt", b"1\n" * 10 + b"2\n" + b"0\n" * 29, r"Labels_sky.txt:11: expected 0/1"),
    ("AllLabels/Labels_sky.txt", b"1\n" * 10 + b"\n" + b"0\n" * 30, r"Labels_sky.txt:11: blank line"),
    ("NUS_WID_Tags/AllTags1k.txt", b"0 1\n" * 40, r"AllTags1k.txt:1: expected 15 values, got 2"),
])
def test_malformed_files_are_one_line_errors(nus, tmp_path, name, data, match):
    folder = tmp_path / "meta"
    shutil.copytree(nus["folder"], folder)
    target = folder / ("Groundtruth/" + name if name.startswith("AllLabels") else name)
    target.write_bytes(data)
    with pytest.raises(PipelineError, match=match) as e:
        nuswide.prepare(tmp_path / "o", settings(nus, path=str(folder)), progress=False)
    assert "\n" not in str(e.value)


def test_settings_errors(nus, tmp_path):
    with pytest.raises(PipelineError, match="images"):
        nuswide.prepare(tmp_path / "o", {"path": str(nus["zips"])}, progress=False)
    with pytest.raises(PipelineError, match="missing_image"):
        nuswide.prepare(tmp_path / "o", settings(nus, missing_image="skip"), progress=False)
    with pytest.raises(PipelineError, match="n_concepts=13 but .*12 concepts"):
        nuswide.prepare(tmp_path / "o", settings(nus, n_concepts=13), progress=False)


def test_metadata_downloaded_through_http(nus, tmp_path, http_server):  # noqa: F811
    for name, prefix in ZIPS.items():
        http_server.files[name] = zip_bytes(prefix)
    s = settings(nus, path=None, mirror=http_server.base_url, download_dir=str(tmp_path / "dl"))
    m = nuswide.prepare(tmp_path / "o", s, progress=False)
    got = sorted(r.path for r in http_server.requests)
    assert got == sorted(ZIPS)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(ZIPS)
    assert m.read_bytes() == nuswide.prepare(tmp_path / "ref", settings(nus), progress=False).read_bytes()
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["provenance"]["downloaded"] == {
        "concepts": "ConceptsList.zip", "groundtruth": "Groundtruth.zip", "imagelist": "ImageList.zip",
        "tags": "NUS_WID_Tags.zip"}
    # a rerun finds the archives in download_dir: no request
    n_req = len(http_server.requests)
    nuswide.prepare(tmp_path / "o", s, progress=False)
    assert len(http_server.requests) == n_req


def test_download_images(nus, tmp_path, http_server, monkeypatch):  # noqa: F811
    """Each kept pair's URL is tried once (url_Middle first); a placeholder PNG, a 404 and a
    pair without URL count as missing; a rerun requests nothing."""
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    url_lines = ["%%%%%%%%%%Photo_file    Photo_id    url_Large   url_Middle   url_Small  url_Original%%%%%"]
    for i in range(N):
        win = "C:\\ImageData\\Flickr\\" + rel(i).replace("/", "\\")
        mid = f"m{i}.jpg"
        if i == 4:      # Flickr's placeholder for a removed photo
            http_server.files[mid] = png.getvalue()
        elif i == 6:    # dead link: 404
            pass
        else:
            http_server.files[mid] = jpeg(i)
        large = http_server.url(f"large{i}.jpg")  # never served: Middle must be tried first
        if i == 8:
            url_lines.append(f"{win}  {1000 + i}  null  null  null  null")
        else:
            url_lines.append(f"{win}  {1000 + i}  {large}  {http_server.url(mid)}  null  null")
    meta = tmp_path / "meta"
    shutil.copytree(nus["folder"], meta)
    (meta / "NUS-WIDE-urls.txt").write_text("\r\n".join(url_lines) + "\r\n")
    s = {"path": str(meta), "n_concepts": 5, "download_images": True, "download_dir": str(tmp_path / "dl")}
    m = nuswide.prepare(tmp_path / "o", s, progress=False)
    prov = json.loads((tmp_path / "o" / "meta.json").read_text())["provenance"]
    # 34 kept rows; 33 with a URL tried once each; 4 (png) and 6 (404) failed; 8 has no URL
    assert prov["download_images"]["attempted"] == 33
    assert prov["download_images"]["downloaded"] == 31
    assert prov["download_images"]["failed"] == 2 and prov["download_images"]["no_url"] == 1
    assert prov["counts"]["missing_image"] == 3 and prov["counts"]["final"] == 31
    assert not any(r.path.startswith("large") for r in http_server.requests)
    assert len(http_server.requests) == 33
    assert (tmp_path / "dl" / "Flickr" / rel(0)).read_bytes() == jpeg(0)
    assert not (tmp_path / "dl" / "Flickr" / rel(4)).exists()
    ids = {r["id"] for r in lines(m)}
    assert {"000004", "000006", "000008"}.isdisjoint(ids) and "000002" in ids
    # rerun: present images are skipped, only the 3 failures (2 with a URL) are retried
    n_req = len(http_server.requests)
    nuswide.prepare(tmp_path / "o", s, progress=False)
    assert len(http_server.requests) - n_req == 2


def test_chunked_parsing_matches_whole_file(nus, tmp_path, monkeypatch):
    """AllTags1k.txt is parsed in chunks of whole lines; tiny chunks (rows split across reads)
    give the same manifest, and a blank line inside is still caught."""
    ref = nuswide.prepare(tmp_path / "ref", settings(nus), progress=False).read_bytes()
    monkeypatch.setattr(nuswide, "_CHUNK", 7)
    assert nuswide.prepare(tmp_path / "small", settings(nus), progress=False).read_bytes() == ref
    folder = tmp_path / "meta"
    shutil.copytree(nus["folder"], folder)
    p = folder / "NUS_WID_Tags" / "AllTags1k.txt"
    rows = p.read_bytes().split(b"\n")
    p.write_bytes(b"\n".join(rows[:20] + [b"\t"] + rows[20:]))
    with pytest.raises(PipelineError, match=r"AllTags1k.txt:21: blank line"):
        nuswide.prepare(tmp_path / "o", settings(nus, path=str(folder)), progress=False)


def test_download_falls_back_to_the_current_bundle(nus, tmp_path, http_server):
    """ConceptsList.zip is not served: NUS-WIDE.zip is downloaded instead, and its Groundtruth/
    serves the labels without another request."""
    http_server.files["ImageList.zip"] = zip_bytes("ImageList/")
    http_server.files["NUS_WID_Tags.zip"] = zip_bytes("NUS_WID_Tags/")
    http_server.files["NUS-WIDE.zip"] = bundle_bytes()
    s = settings(nus, path=None, mirror=http_server.base_url, download_dir=str(tmp_path / "dl"))
    m = nuswide.prepare(tmp_path / "o", s, progress=False)
    assert [(r.path, r.status) for r in http_server.requests] == [
        ("ImageList.zip", 200), ("ConceptsList.zip", 404), ("NUS-WIDE.zip", 200), ("NUS_WID_Tags.zip", 200)]
    assert m.read_bytes() == nuswide.prepare(tmp_path / "ref", settings(nus), progress=False).read_bytes()
    prov = json.loads((tmp_path / "o" / "meta.json").read_text())["provenance"]
    assert prov["downloaded"] == {"concepts": "NUS-WIDE.zip", "imagelist": "ImageList.zip",
                                  "tags": "NUS_WID_Tags.zip"}
    assert "NUS-WIDE.zip:NUS-WIDE/Groundtruth/AllLabels/Labels_sky.txt" in prov["sources"]


def test_missing_file_says_which_and_where_it_comes_from(nus, tmp_path, http_server):
    folder = tmp_path / "meta"
    shutil.copytree(nus["folder"], folder)
    shutil.rmtree(folder / "NUS_WID_Tags")
    s = settings(nus, path=str(folder), mirror=http_server.base_url, download_dir=str(tmp_path / "dl"))
    with pytest.raises(PipelineError) as e:            # not served: 404
        nuswide.prepare(tmp_path / "o", s, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"nuswide: TagList1k.txt is not in {folder} or {tmp_path / 'dl'}, and "
                          "NUS_WID_Tags.zip could not be downloaded (NUS_WID_Tags.zip: HTTP 404")
    assert msg.endswith(f"it is in NUS_WID_Tags.zip, from {BASE}NUS_WID_Tags.zip (the NUS-WIDE "
                        f"page: {BASE}NUS-WIDE.html)")
    assert [r.path for r in http_server.requests] == ["NUS_WID_Tags.zip"]  # the mirror's, once

    shutil.rmtree(folder / "ConceptsList")              # two archives hold it: both named
    with pytest.raises(PipelineError, match=r"^nuswide: Concepts81.txt is not in .*, and neither "
                       r"ConceptsList.zip nor NUS-WIDE.zip could be downloaded \(ConceptsList.zip: HTTP "
                       r"404 .*; NUS-WIDE.zip: HTTP 404 .*\); it is in ConceptsList.zip or NUS-WIDE.zip, "
                       r"from https://"):
        nuswide.prepare(tmp_path / "o", s, progress=False)
    shutil.copytree(nus["folder"] / "ConceptsList", folder / "ConceptsList")

    buf = io.BytesIO()                                 # an archive without AllTags1k.txt
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("TagList1k.txt", "".join(t + "\n" for t in VOCAB))
    http_server.files["NUS_WID_Tags.zip"] = buf.getvalue()
    with pytest.raises(PipelineError, match=r"^nuswide: AllTags1k.txt is not in .*, nor in the "
                       r"downloaded NUS_WID_Tags.zip; it is in NUS_WID_Tags.zip, from https://") as e:
        nuswide.prepare(tmp_path / "o", s, progress=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("header", [URLS_HEADER, "Photo_file  Photo_id  url_Large  url_Middle  url_Small  url_Original"])
def test_current_layout_image_list_from_urls(nus, tmp_path, http_server, caplog, zipped, header):
    """NUS-WIDE.zip + NUS_WID_Tags.zip (or extracted) without ImageList: NUS-WIDE-urls.txt lists
    the same images in the same order, so it gives the row order; nothing is downloaded."""
    meta = write_current_layout(tmp_path / "meta", zipped, urls_txt(header=header))
    s = settings(nus, path=str(meta), mirror=http_server.base_url, download_dir=str(tmp_path / "dl"))
    with caplog.at_level(logging.INFO, logger="pipeline.data.nuswide"):
        m = nuswide.prepare(tmp_path / "o", s, progress=False)
    assert http_server.requests == []
    assert m.read_bytes() == nuswide.prepare(tmp_path / "ref", settings(nus), progress=False).read_bytes()
    prov = json.loads((tmp_path / "o" / "meta.json").read_text())["provenance"]
    assert prov["image_list"] == {"file": "NUS-WIDE-urls.txt",
                                  "rule": "first column of NUS-WIDE-urls.txt, in file order (no Imagelist.txt)"}
    assert prov["sources"]["NUS-WIDE-urls.txt"] == hashlib.sha256(urls_txt(header=header)).hexdigest()
    assert ("Labels_sky.txt" if not zipped else "NUS-WIDE.zip:NUS-WIDE/Groundtruth/AllLabels/Labels_sky.txt") \
        in prov["sources"]
    assert "no Imagelist.txt: the row order is that of" in caplog.text


def test_imagelist_is_preferred_to_urls(nus, tmp_path):
    meta = tmp_path / "meta"
    shutil.copytree(nus["folder"], meta)
    (meta / "NUS-WIDE-urls.txt").write_bytes(urls_txt(n=N - 1))   # would not match: not used
    nuswide.prepare(tmp_path / "o", settings(nus, path=str(meta)), progress=False)
    prov = json.loads((tmp_path / "o" / "meta.json").read_text())["provenance"]
    assert prov["image_list"] == {"file": "Imagelist.txt", "rule": "ImageList/Imagelist.txt"}


def test_urls_list_with_another_row_count_is_one_line(nus, tmp_path):
    meta = write_current_layout(tmp_path / "meta", True, urls_txt(n=N - 1))
    with pytest.raises(PipelineError) as e:
        nuswide.prepare(tmp_path / "o", settings(nus, path=str(meta)), progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"nuswide: {meta / 'NUS-WIDE-urls.txt'} lists 39 images but {meta / 'NUS-WIDE.zip'}:"
                          "NUS-WIDE/Groundtruth/AllLabels/Labels_")
    assert "has more rows, so it cannot give the row order; put Imagelist.txt into " in msg
    assert f"(it is in ImageList.zip, from {BASE}ImageList.zip" in msg
    meta2 = write_current_layout(tmp_path / "meta2", True, urls_txt(n=N) + urls_txt(n=1, header="%"))
    with pytest.raises(PipelineError, match=r"lists 41 images but .*Labels_\w+.txt has 40 rows, so it "
                                            r"cannot give the row order"):
        nuswide.prepare(tmp_path / "o", settings(nus, path=str(meta2)), progress=False)


def test_no_source_of_the_image_list_is_one_line(nus, tmp_path, http_server):
    meta = write_current_layout(tmp_path / "meta", True)            # no urls file either
    s = settings(nus, path=str(meta), mirror=http_server.base_url, download_dir=str(tmp_path / "dl"))
    with pytest.raises(PipelineError) as e:
        nuswide.prepare(tmp_path / "o", s, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"nuswide: Imagelist.txt is not in {meta} or {tmp_path / 'dl'}, and "
                          "ImageList.zip could not be downloaded (ImageList.zip: HTTP 404")
    assert f"it is in ImageList.zip, from {BASE}ImageList.zip (the NUS-WIDE page: " in msg
    assert msg.endswith(f"; or put NUS-WIDE-urls.txt (the same images in the same order; extract it from "
                        f"NUS-WIDE-urls.rar, {BASE}NUS-WIDE-urls.rar) into {meta}")


def test_flat_image_folder_found_by_file_name(nus, tmp_path, caplog, monkeypatch):
    """All images in one folder (images/0001_1001.jpg) instead of Flickr/<concept>/<file>: found
    by file name from an index built once; a name found twice is ambiguous: counted, dropped."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((nus["images"] / "Flickr").rglob("*.jpg")):
        shutil.copy(p, flat / p.name)
    (flat / "copies").mkdir()
    shutil.copy(flat / Path(rel(1)).name, flat / "copies")           # row 1's name twice
    calls = []
    real_index = nuswide._name_index
    monkeypatch.setattr(nuswide, "_name_index", lambda *a: calls.append(a) or real_index(*a))
    with caplog.at_level(logging.INFO, logger="pipeline.data.nuswide"):
        m = nuswide.prepare(tmp_path / "o", settings(nus, images=str(flat)), progress=False)
    assert len(calls) == 1                                             # one index, not a walk per image
    ref = [r for r in lines(nuswide.prepare(tmp_path / "ref", settings(nus), progress=False))]
    assert lines(m) == [r for r in ref if r["id"] != "000001"]         # same pairs, same hashes
    assert (tmp_path / "o" / "images" / rel(0)).resolve() == (flat / Path(rel(0)).name).resolve()
    prov = json.loads((tmp_path / "o" / "meta.json").read_text())["provenance"]
    assert prov["counts"]["missing_image"] == 3 and prov["counts"]["final"] == 31
    assert prov["images_by_name"] == {"found": 31, "ambiguous": 1, "first_ambiguous": Path(rel(1)).name}
    assert "31 images found by file name" in caplog.text
    assert (f"1 image has a file name found more than once under {flat} ({Path(rel(1)).name}: {flat / Path(rel(1)).name}, {flat / 'copies' / Path(rel(1)).name}); "
            "treated as missing") in caplog.text


def test_authors_tree_needs_no_name_index(nus, tmp_path, monkeypatch):
    """Every image at Flickr/<concept>/<file>: no directory walk at all."""
    imgs = tmp_path / "imgs"
    shutil.copytree(nus["images"], imgs)
    for i in MISSING:
        (imgs / "Flickr" / rel(i)).write_bytes(jpeg(i))
    monkeypatch.setattr(nuswide, "_name_index", lambda *a: pytest.fail("walked the image folder"))
    nuswide.prepare(tmp_path / "o", settings(nus, images=str(imgs), hash_images=False), progress=False)


# ------------------------------------------------------------------------- low-level features
def bow_sift_text(n: int = 6, dim: int = 500) -> bytes:
    """A tiny BoW_int.dat in the official text format: row i holds i + j % 7 at column j."""
    return b"".join((" ".join(str(i + j % 7) for j in range(dim)) + " \n").encode() for i in range(n))


def test_bow_sift_rows_are_read_in_image_list_order_from_a_file_or_a_zip(tmp_path):
    import numpy as np

    folder = tmp_path / "ll" / "Low_Level_Features"
    folder.mkdir(parents=True)
    (folder / "BoW_int.dat").write_bytes(bow_sift_text())
    feats, info = nuswide.read_bow_sift([4, 1], tmp_path / "ll", tmp_path / "dl", progress=False)
    want = np.array([[r + j % 7 for j in range(500)] for r in (4, 1)], np.float32)
    assert feats.dtype == np.float32 and feats.shape == (2, 500) and np.array_equal(feats, want)
    assert info["rows_in_file"] == 6 and info["url"].endswith("/Low_Level_Features.rar")
    assert info["sha256"] == hashlib.sha256(bow_sift_text()).hexdigest()
    # the same file inside a zip (Low_Level_Features.rar re-zipped): found by name
    z = tmp_path / "z"
    z.mkdir()
    with zipfile.ZipFile(z / "Low_Level_Features.zip", "w") as zf:
        zf.writestr("Low_Level_Features/BoW_int.dat", bow_sift_text())
    feats2, _ = nuswide.read_bow_sift([4, 1], z, tmp_path / "dl", progress=False)
    assert np.array_equal(feats2, want)


def test_bow_sift_bad_files_are_one_line(tmp_path):
    import numpy as np

    with pytest.raises(PipelineError, match="line 2 has 3 values, not 500"):
        nuswide.parse_bow_sift(io.BytesIO(bow_sift_text(1) + b"1 2 3\n"), np.array([1]), "BoW_int.dat")
    with pytest.raises(PipelineError, match="has 2 rows, but pair id 5 is asked for"):
        nuswide.parse_bow_sift(io.BytesIO(bow_sift_text(2)), np.array([0, 5]), "BoW_int.dat")
    with pytest.raises(PipelineError, match="not a number"):
        nuswide.parse_bow_sift(io.BytesIO(b"x " * 500 + b"\n"), np.array([0]), "BoW_int.dat")
    # missing everywhere: the download is tried (a mirror that serves nothing), then one line
    # that names the file, its RAR archive and its official URL
    with pytest.raises(PipelineError, match=r"BoW_int.dat is not in .*Low_Level_Features.rar.*extract BoW_int.dat"):
        nuswide.read_bow_sift([0], None, tmp_path / "dl", mirror=(tmp_path / "nomirror").as_uri() + "/",
                              progress=False)


def test_extract_image_with_the_official_bow_sift_writes_an_image_file_assembly_accepts(nus, tmp_path):
    """`image_features.model: nuswide_bow_sift`: the extract-image stage reads each kept pair's row
    of BoW_int.dat (its id is its image-list row) instead of running a network, in the image-file
    format that merge and assembly read."""
    import h5py
    import numpy as np

    from pipeline.io import read_strings
    from pipeline.stages import extract

    manifest = nuswide.prepare(tmp_path / "out", settings(nus), progress=False)
    ll = tmp_path / "ll"
    ll.mkdir()
    (ll / "BoW_int.dat").write_bytes(bow_sift_text(N))
    s = {"dataset": "nuswide@handcrafted", "seed": 0, "device": "cpu",
         "image_features": {"model": "nuswide_bow_sift"}, "low_level": {"path": str(ll)}}
    out = tmp_path / "image.h5"
    extract.run_image(manifest, s, out, device=None, progress=False)
    ids = [p.id for p in read_manifest(manifest).pairs]
    with h5py.File(out, "r") as f:
        assert read_strings(f, "ids") == ids and f["ok"][()].all()
        want = np.array([[int(i) + j % 7 for j in range(500)] for i in ids], np.float32)
        assert np.array_equal(f["image"][()], want)
        assert f.attrs["model"] == "nuswide_bow_sift" and f.attrs["dim"] == 500
        assert json.loads(f.attrs["image_settings"]) == {"model": "nuswide_bow_sift"}
    merged = tmp_path / "merged.h5"
    extract.run_merge([out], merged, manifest=manifest, progress=False)
    with h5py.File(merged, "r") as f:
        assert f["image"].shape == (len(ids), 500)
