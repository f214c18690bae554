"""source: webdataset (pipeline/data/webdataset.py): tar shards read as streams, images recorded by
byte range and read in place, keys by WebDataset's rule, duplicates across shards, bad samples."""

import io
import json
import tarfile

import pytest

from pipeline.data import webdataset as wds
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError

from conftest import write_collection


def make_shards(tmp_path, n=10, per=4, labels=True, extra=None):
    """Shards shard-000.tar ... of `per` samples each from a demo collection; `extra`: members to
    append to the last shard (name -> bytes)."""
    items = write_collection(tmp_path / "src", n, nested=False, labels=labels)
    out = tmp_path / "shards"
    out.mkdir()
    paths = []
    for s in range(0, n, per):
        p = out / f"shard-{s // per:03d}.tar"
        with tarfile.open(p, "w") as tar:
            for d in items[s:s + per]:
                k = d["key"]
                for ext, data in (("JPG", d["path"].read_bytes()), ("txt", d["caption"].encode()),
                                  ("json", json.dumps({"labels": d["labels"], "tags": d["tags"]} if labels else {}).encode())):
                    info = tarfile.TarInfo(f"{k}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            if extra and s + per >= n:
                for name, data in extra.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(p)
    return items, paths


def prep(pattern, out, **over):
    s = {"dataset": "mine", "seed": 0, "source": "webdataset", "path": str(pattern), **over}
    return read_manifest(wds.prepare(out, s, progress=False))


def test_shards_by_brace_pattern_read_in_place(tmp_path):
    items, paths = make_shards(tmp_path)
    m = prep(tmp_path / "shards" / "shard-{000..002}.tar", tmp_path / "out")
    assert [p.id for p in m.pairs] == [d["key"] for d in items]
    assert [p.image for p in m.pairs] == [str(paths[i // 4].resolve()) for i in range(10)]
    for i, d in enumerate(items):
        assert m.image_ref(i).read() == d["path"].read_bytes()  # the byte range of the member's data
        assert m.pairs[i].member == f"{d['key']}.JPG" and m.pairs[i].caption == d["caption"].strip()
    assert m.labelled and m.meta["provenance"]["shards"] == [str(p.resolve()) for p in paths]


def test_keys_split_at_the_first_dot_and_duplicates_across_shards(tmp_path):
    jpg = (write_collection(tmp_path / "one", 1, nested=False)[0]["path"]).read_bytes()
    _, paths = make_shards(tmp_path, n=4, per=2, extra={"dir/a.b.jpg": jpg, "dir/a.b.txt": b"dotted",
                                                         "img0000.jpg": jpg, "img0000.txt": b"again"})
    m = prep("::".join(str(p) for p in paths), tmp_path / "out", on_bad_image="drop")
    ids = [p.id for p in m.pairs]
    assert "dir/a" in ids and m.pairs[ids.index("dir/a")].caption == "dotted"  # key up to the first dot
    assert m.pairs[ids.index("dir/a")].member == "dir/a.b.jpg"  # field b.jpg: an image by its last part
    assert ids.count("img0000") == 1 and m.meta["provenance"]["dropped"] == {"duplicate_key": 1}


def test_samples_without_image_or_caption_and_unreadable_images(tmp_path):
    _, paths = make_shards(tmp_path, n=4, per=4, extra={"lonely.txt": b"no image", "bad.jpg": b"\xff\xd8 nope",
                                                         "bad.txt": b"x", "mute.jpg": b"\xff\xd8"})
    with pytest.raises(PipelineError, match=r"2 bad item\(s\) \(1 missing image, 1 unreadable image\)"):
        prep(paths[0], tmp_path / "out")
    m = prep(paths[0], tmp_path / "out", on_bad_image="drop")
    assert len(m.pairs) == 4
    assert m.meta["provenance"]["dropped"] == {"missing_image": 1, "no_caption": 1, "unreadable_image": 1}


def test_missing_compressed_and_damaged_shards_are_one_line(tmp_path):
    _, paths = make_shards(tmp_path, n=4, per=2)
    with pytest.raises(PipelineError, match=r"1 of 3 shard\(s\) missing, first .*shard-002.tar"):
        prep(tmp_path / "shards" / "shard-{000..002}.tar", tmp_path / "out")
    import gzip

    gz = tmp_path / "shards" / "c.tar"
    gz.write_bytes(gzip.compress(paths[0].read_bytes()))
    with pytest.raises(PipelineError, match="is compressed: images are read in place"):
        prep(gz, tmp_path / "out")
    bad = tmp_path / "shards" / "bad.tar"
    bad.write_bytes(paths[0].read_bytes()[:700])
    with pytest.raises(PipelineError, match="bad.tar"):
        prep(bad, tmp_path / "out")


def test_extraction_shards_are_whole_tar_shards(tmp_path):
    from pipeline.stages.extract import image_rows

    _, paths = make_shards(tmp_path, n=10, per=4)  # tars of 4, 4, 2 samples
    m = prep(tmp_path / "shards" / "shard-{000..002}.tar", tmp_path / "out")
    assert [image_rows(m, i, 3) for i in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert [image_rows(m, i, 2) for i in range(2)] == [(0, 8), (8, 10)]
    assert [image_rows(m, i, 5) for i in range(5)] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]  # more jobs than tars
