"""The raw form's shared helpers."""

import pytest

from pipeline.data.manifest import begin_rewrite
from pipeline.errors import PipelineError


def test_begin_rewrite_removes_the_manifest_first(tmp_path):
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    (tmp_path / "meta.json").write_text("{}")
    folder = begin_rewrite(tmp_path, "x", "images")
    assert folder == tmp_path / "images" and folder.is_dir()
    assert not (tmp_path / "manifest.jsonl").exists() and (tmp_path / "meta.json").exists()
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(PipelineError, match=r"^x: cannot create .*blocker"):
        begin_rewrite(tmp_path / "blocker", "x")


def _demo_folder(tmp_path, lines, meta='{"classes": ["a", "b"]}'):
    (tmp_path / "meta.json").write_text(meta)
    (tmp_path / "manifest.jsonl").write_bytes(b"".join(lines))
    return tmp_path / "manifest.jsonl"


LINE = b'{"id": "%s", "image": "images/%s.jpg", "caption": "x", "tags": [], "labels": [0]}\n'


def test_duplicate_ids_are_refused_naming_both_lines(tmp_path):
    from pipeline.data.manifest import read_manifest

    path = _demo_folder(tmp_path, [LINE % (b"1", b"1"), LINE % (b"2", b"2"), LINE % (b"1", b"3")])
    with pytest.raises(PipelineError, match=r"manifest.jsonl:3: duplicate id '1' \(first on line 1\)"):
        read_manifest(path)


def test_writing_a_manifest_with_duplicate_ids_is_refused(tmp_path):
    from pipeline.data.manifest import Pair, write_manifest

    pairs = [Pair(id="a", image="i/a.jpg", caption="x", tags=[], labels=[0]) for _ in range(2)]
    with pytest.raises(PipelineError, match="duplicate id 'a'"):
        write_manifest(tmp_path, ["c"], pairs)
    assert not (tmp_path / "manifest.jsonl").exists()


def test_non_utf8_manifest_and_meta_are_one_line(tmp_path):
    from pipeline.data.manifest import read_manifest

    path = _demo_folder(tmp_path, [LINE % (b"1", b"1"), b'{"id": "2", "caption": "caf\xe9"}\n'])
    with pytest.raises(PipelineError, match=r"manifest.jsonl:2: not valid UTF-8"):
        read_manifest(path)
    path = _demo_folder(tmp_path, [LINE % (b"1", b"1")])
    (tmp_path / "meta.json").write_bytes(b'{"classes": ["\xe9"]}')  # latin-1, not UTF-8
    with pytest.raises(PipelineError, match=r"meta.json: not valid UTF-8 JSON"):
        read_manifest(path)


@pytest.mark.parametrize("line, needle", [
    (b'[1, 2]', "not a JSON object but a list"),
    (b'{"id": "1", "image": "i.jpg", "caption": "x"}', "missing key 'labels'"),
    (b'{"id": "1", "caption": "x", "labels": [0]}', "missing key 'image'"),
    (b'{"id": "1", "image": "i.jpg", "tags": "red ball", "labels": [0]}', "'tags' must be a list of strings"),
    (b'{"id": "1", "image": "i.jpg", "labels": "11"}', "'labels' must be a list of class indices"),
    (b'{"id": "1", "image": "i.jpg", "labels": [1.7]}', "'labels' must be a list of class indices"),
    (b'{"id": "1", "image": "i.jpg", "labels": [true]}', "'labels' must be a list of class indices"),
    (b'{"id": "1", "image": "i.jpg", "labels": [0], "split": "querry"}', "'split' must be null, 'query' or"),
    (b'{"id": "1", "image": "i.jpg", "labels": [0], "caption": 123}', "'caption' must be a string"),
    (b'{"id": "1", "image": "", "labels": [0]}', "'image' must be a non-empty path"),
    (b'{"id": null, "image": "i.jpg", "labels": [0]}', "'id' must be a non-empty string"),
])
def test_a_line_of_wrong_types_is_refused_not_coerced(tmp_path, line, needle):
    """A string of tags would become its characters, "11" the labels 1 and 1, a misspelt split the
    seeded protocol for every pair: refused in one line naming the file, the line and the key."""
    from pipeline.data.manifest import read_manifest

    path = _demo_folder(tmp_path, [LINE % (b"0", b"0"), line + b"\n"])
    with pytest.raises(PipelineError, match="manifest.jsonl:2: bad manifest line") as e:
        read_manifest(path)
    assert needle in str(e.value)


def test_valid_optional_fields_still_read(tmp_path):
    from pipeline.data.manifest import read_manifest

    path = _demo_folder(tmp_path, [b'{"id": 7, "image": "i.jpg", "labels": [], "caption": null, "tags": null, '
                                   b'"split": "query", "sha256": null}\n'])
    p = read_manifest(path).pairs[0]
    assert (p.id, p.caption, p.tags, p.labels, p.split) == ("7", "", [], [], "query")


@pytest.mark.parametrize("meta, needle", [
    ('{"classes": "abc"}', "'classes' must be a list of class names (an empty list for a collection without labels), not 'abc'"),
    ('{"classes": [1, 2]}', "'classes' must be a list of class names"),
    ('{"classes": ["a", "b"], "tag_vocab": "red ball"}', "'tag_vocab' must be a list of tags or null"),
])
def test_meta_json_of_wrong_types_is_refused(tmp_path, meta, needle):
    """A string of classes became its characters (labels checked against a, b, c), a string
    vocabulary 'duplicate entries' of its letters."""
    from pipeline.data.manifest import read_manifest

    path = _demo_folder(tmp_path, [LINE % (b"0", b"0")], meta=meta)
    with pytest.raises(PipelineError, match="meta.json: ") as e:
        read_manifest(path)
    assert needle in str(e.value)
