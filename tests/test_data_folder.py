"""source: folder (pipeline/data/folder.py) and the checks every own collection shares
(pipeline/data/collection.py): nested folders, odd names, upper-case extensions, BOMs, unicode,
missing and unreadable images, duplicate keys, empty captions, a collection without labels."""

import json
import logging

import pytest

from pipeline.data import folder
from pipeline.data.collection import normalize_split, parse_list
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError

from conftest import write_collection


def prep(root, out, **over):
    s = {"dataset": "mine", "seed": 0, "source": "folder", "path": str(root), **over}
    return read_manifest(folder.prepare(out, s, progress=False))


def test_nested_folder_with_labels(tmp_path):
    items = write_collection(tmp_path / "c", 12)
    m = prep(tmp_path / "c", tmp_path / "out")
    assert [p.id for p in m.pairs] == [d["key"] for d in items]
    assert m.labelled and m.classes == sorted({lab for d in items for lab in d["labels"]})
    for p, d in zip(m.pairs, items):
        assert p.caption == d["caption"].strip() and m.image_path(m.pairs.index(p)) == d["path"].resolve()
        assert [m.classes[c] for c in p.labels] == sorted(d["labels"])
        assert p.tags == list(dict.fromkeys(t.lower() for t in d["tags"])) and len(p.sha256) == 64
    assert m.tag_vocab == sorted({t for d in items for t in d["tags"]})
    assert m.meta["provenance"]["kept"] == 12 and m.meta["provenance"]["labelled"]


def test_a_collection_without_labels_or_json(tmp_path):
    write_collection(tmp_path / "c", 6, labels=False, tags=False)
    m = prep(tmp_path / "c", tmp_path / "out")
    assert m.classes == [] and not m.labelled and all(p.labels == [] for p in m.pairs)
    assert m.label_matrix().shape == (6, 0) and m.tag_vocab is None


def test_odd_names_upper_case_extensions_bom_and_unicode(tmp_path):
    root = tmp_path / "c"
    write_collection(root, 3, nested=False)
    odd = root / "Ünïcode dir" / "IMG 0001.final.JPG"
    odd.parent.mkdir()
    (root / "img0000.jpg").rename(odd)
    (root / "img0000.txt").rename(odd.with_suffix(".TXT"))
    odd.with_suffix(".TXT").write_bytes("\ufeffun café « rouge », 東京\n".encode("utf-8"))
    (root / "img0000.json").unlink()
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "._img0001.jpg").write_bytes(b"resource fork")
    (root / "README.txt").write_text("not a pair")
    m = prep(root, tmp_path / "out")
    ids = [p.id for p in m.pairs]
    assert ids == ["img0001", "img0002", "Ünïcode dir/IMG 0001.final"]
    assert m.pairs[2].caption == "un café « rouge », 東京"


def test_bad_images_error_counts_them_all_in_one_line(tmp_path, caplog):
    root = tmp_path / "c"
    write_collection(root, 8, nested=False)
    (root / "img0002.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "img0003.jpg").write_bytes(b"")
    (root / "img0005.png").write_bytes((root / "img0005.jpg").read_bytes())  # a duplicate key
    with caplog.at_level(logging.WARNING), pytest.raises(PipelineError) as e:
        prep(root, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and "3 bad item(s) (2 unreadable image, 1 duplicate key)" in msg
    assert f"first: unreadable image for key 'img0002': {(root / 'img0002.jpg').resolve()} (" in msg
    assert "on_bad_image: drop" in msg and "BytesIO" not in msg
    assert "img0003.jpg" in caplog.text and "duplicate key 'img0005'" in caplog.text
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_drop_policy_drops_and_records_bad_images_and_empty_captions(tmp_path):
    root = tmp_path / "c"
    items = write_collection(root, 8, nested=False)
    (root / "img0002.jpg").write_bytes(b"garbage")
    (root / "img0004.txt").write_text("   \n")
    (root / "img0006.txt").unlink()
    m = prep(root, tmp_path / "out", on_bad_image="drop")
    assert [p.id for p in m.pairs] == [d["key"] for d in items if d["key"] not in ("img0002", "img0004", "img0006")]
    prov = m.meta["provenance"]
    assert prov["dropped"] == {"empty_caption": 1, "no_caption": 1, "unreadable_image": 1}
    assert prov["dropped_first_ids"]["unreadable_image"] == ["img0002"]


def test_empty_captions_are_dropped_even_under_error(tmp_path, caplog):
    root = tmp_path / "c"
    write_collection(root, 5, nested=False)
    (root / "img0001.txt").write_text("")
    with caplog.at_level(logging.WARNING):
        m = prep(root, tmp_path / "out")
    assert len(m.pairs) == 4 and "empty caption for key 'img0001'; pair dropped" in caplog.text
    assert "1 pair(s) dropped: empty caption" in caplog.text


@pytest.mark.parametrize("write, needle", [
    (lambda r: (r / "img0001.json").write_text("{not json"), "img0001.json: not valid JSON"),
    (lambda r: (r / "img0001.json").write_text('{"split": "holdout"}'), "img0001.json: split 'holdout' is not one of"),
    (lambda r: (r / "img0001.txt").write_bytes(b"caf\xe9"), "img0001.txt: not valid UTF-8 (byte 3)"),
])
def test_a_malformed_file_is_one_line_naming_it(tmp_path, write, needle):
    root = tmp_path / "c"
    write_collection(root, 3, nested=False)
    write(root)
    with pytest.raises(PipelineError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
        prep(root, tmp_path / "out")
    assert "\n" not in str(e.value)


def test_splits_from_the_json(tmp_path):
    root = tmp_path / "c"
    write_collection(root, 4, nested=False, labels=False, tags=False)
    for i, sp in enumerate(["test", "train", "Train", "query"]):
        (root / f"img{i:04d}.json").write_text(json.dumps({"split": sp}))
    m = prep(root, tmp_path / "out")
    assert [p.split for p in m.pairs] == ["query", "database", "database", "query"]


def test_no_folder_and_no_pairs_are_one_line(tmp_path):
    with pytest.raises(PipelineError, match="no such folder"):
        prep(tmp_path / "absent", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no usable pair among 0 item"):
        prep(tmp_path / "empty", tmp_path / "out")


def test_parse_list_and_split_by_hand():
    assert parse_list('["a", "b c"]') == ["a", "b c"]
    assert parse_list("a, b;c") == ["a", "b;c"] and parse_list("x;y") == ["x", "y"] and parse_list("x  y") == ["x", "y"]
    assert parse_list("a|b", "|") == ["a", "b"] and parse_list(None) == [] and parse_list(float("nan")) == []
    assert parse_list(["a", None, " "]) == ["a"]
    with pytest.raises(ValueError):
        parse_list("[broken")
    assert normalize_split(None, "w") is None and normalize_split(" VAL ", "w") == "query"
