"""source: table (pipeline/data/table.py): CSV with a BOM, quoted captions with commas, quotes and
line breaks, TSV, JSON lines, Parquet; configurable and missing optional columns; malformed rows
named by file and line."""

import json
import shutil

import pytest

from pipeline.data import table
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError

from conftest import write_collection


@pytest.fixture
def images(tmp_path):
    items = write_collection(tmp_path / "imgs", 6, nested=False)
    return tmp_path / "imgs", items


def prep(path, out, **over):
    s = {"dataset": "mine", "seed": 0, "source": "table", "path": str(path), **over}
    return read_manifest(table.prepare(out, s, progress=False))


def test_csv_with_bom_quotes_and_line_breaks(tmp_path, images):
    root, items = images
    rows = ['image,caption,tags,labels,split',
            'imgs/img0000.jpg,"a ball, a box and a ""star""",red;ball,ball,test',
            'imgs/img0001.jpg,"two lines:\nthe second line",,,train',
            f'{(root / "img0002.jpg").resolve()},un café « rouge » 東京,"[""Tree"", ""green""]","[""tree""]",train']
    p = tmp_path / "pairs.csv"
    p.write_bytes("\ufeff".encode() + "\r\n".join(rows).encode("utf-8") + b"\r\n")
    m = prep(p, tmp_path / "out")
    assert [q.id for q in m.pairs] == ["imgs/img0000", "imgs/img0001", "imgs/img0002"]
    assert m.pairs[0].caption == 'a ball, a box and a "star"' and m.pairs[1].caption == "two lines:\nthe second line"
    assert m.pairs[2].caption == "un café « rouge » 東京" and m.pairs[2].tags == ["tree", "green"]
    assert m.pairs[0].tags == ["red", "ball"] and m.classes == ["ball", "tree"]
    assert [q.split for q in m.pairs] == ["query", "database", "database"]
    assert m.meta["provenance"]["format"] == "csv"


def test_tsv_with_configured_columns_and_ids(tmp_path, images):
    root, _ = images
    p = tmp_path / "pairs.tsv"
    p.write_text("file\ttext\tkey\n" + "".join(f"imgs/img{i:04d}.jpg\tcaption {i}\tk{i}\n" for i in range(4)))
    m = prep(p, tmp_path / "out", columns={"image": "file", "caption": "text", "id": "key"})
    assert [q.id for q in m.pairs] == ["k0", "k1", "k2", "k3"] and not m.labelled
    assert m.pairs[3].caption == "caption 3"


def test_jsonl_and_parquet_give_the_same_manifest(tmp_path, images):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, items = images
    recs = [{"image": f"imgs/img{i:04d}.jpg", "caption": d["caption"], "labels": d["labels"], "tags": d["tags"]}
            for i, d in enumerate(items)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "\n")
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "pairs.parquet")
    a = prep(tmp_path / "pairs.jsonl", tmp_path / "a")
    b = prep(tmp_path / "pairs.parquet", tmp_path / "b")
    assert [q.to_json() for q in a.pairs] == [q.to_json() for q in b.pairs] and a.classes == b.classes
    assert len(a.pairs) == 6 and a.labelled


def test_a_second_caption_of_one_image_is_a_duplicate_key_unless_ids_are_given(tmp_path, images):
    p = tmp_path / "pairs.csv"
    p.write_text("image,caption\nimgs/img0000.jpg,first\nimgs/img0001.jpg,other\nimgs/img0000.jpg,second\n")
    with pytest.raises(PipelineError, match="1 bad item.s. .1 duplicate key.; first: .*pairs.csv:4: duplicate key "
                                            "'imgs/img0000' .first: .*pairs.csv:2.; the first is kept"):
        prep(p, tmp_path / "out")
    m = prep(p, tmp_path / "out", on_bad_image="drop")
    assert [q.caption for q in m.pairs] == ["first", "other"]
    p.write_text("id,image,caption\na,imgs/img0000.jpg,first\nb,imgs/img0001.jpg,other\nc,imgs/img0000.jpg,second\n")
    assert len(prep(p, tmp_path / "out").pairs) == 3


@pytest.mark.parametrize("name, text, needle", [
    ("t.csv", "picture,caption\nimgs/img0000.jpg,x\n", "no column 'image' (columns: picture, caption; set columns.image"),
    ("t.csv", "image,caption\nimgs/img0000.jpg,x\nimgs/img0001.jpg,a,b\n", "t.csv:3: 3 fields but the header has 2"),
    ("t.csv", "image,caption\n,x\n", "t.csv:2: empty image path"),
    ("t.csv", "image,caption\nhttp://x.org/a.jpg,x\n", "t.csv:2: the image 'http://x.org/a.jpg' is a URL"),
    ("t.csv", "image,caption,split\nimgs/img0000.jpg,x,holdout\n", "t.csv:2: split 'holdout' is not one of"),
    ("t.csv", 'image,caption,tags\nimgs/img0000.jpg,x,"[broken"\n', "t.csv:2: not a JSON list"),
    ("t.jsonl", '{"image": "imgs/img0000.jpg", "caption": "x"}\n{"image": \n', "t.jsonl:2: not valid JSON"),
    ("t.jsonl", '{"caption": "x"}\n', "t.jsonl:1: no 'image' field"),
    ("t.xlsx", "", "unknown extension '.xlsx'"),
])
def test_malformed_rows_are_one_line_naming_file_and_line(tmp_path, images, name, text, needle):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(PipelineError) as e:
        prep(p, tmp_path / "out")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_non_utf8_csv_is_one_line(tmp_path, images):
    p = tmp_path / "t.csv"
    p.write_bytes(b"image,caption\nimgs/img0000.jpg,caf\xe9\n")
    with pytest.raises(PipelineError, match="not valid UTF-8"):
        prep(p, tmp_path / "out")


def test_missing_images_and_empty_captions(tmp_path, images):
    root, _ = images
    p = tmp_path / "t.csv"
    p.write_text("image,caption\nimgs/img0000.jpg,ok\nimgs/nope.jpg,gone\nimgs/img0002.jpg,\nimgs/img0003.jpg,fine\n")
    with pytest.raises(PipelineError, match="1 missing image"):
        prep(p, tmp_path / "out")
    m = prep(p, tmp_path / "out", on_bad_image="drop")
    assert [q.caption for q in m.pairs] == ["ok", "fine"]
    assert m.meta["provenance"]["dropped"] == {"empty_caption": 1, "missing_image": 1}


def test_the_table_may_move_with_its_images(tmp_path, images):
    p = tmp_path / "t.csv"
    p.write_text("image,caption\nimgs/img0000.jpg,ok\n")
    shutil.copytree(tmp_path / "imgs", tmp_path / "moved" / "imgs")
    (tmp_path / "moved" / "t.csv").write_text(p.read_text())
    m = prep(tmp_path / "moved" / "t.csv", tmp_path / "out")
    assert m.image_path(0) == (tmp_path / "moved" / "imgs" / "img0000.jpg").resolve()
