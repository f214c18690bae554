"""encode stage -> codes.h5 + index; `cmimh search` over the index."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.eval.codes import read_codes, unpack_bits
from pipeline.eval.hamming import hamming_distances
from pipeline.features.store import read_features
from pipeline.methods.base import save_model
from pipeline.methods.cmimh import CMIMH
from pipeline.search.index import load_index, load_query_encoder, search
from pipeline.stages import encode, extract


def train_cmimh(x, y, bits, settings, seed, device, progress=False):
    model = CMIMH(bits, settings)
    return model, model.fit(x, y, seed=seed, device=device, progress=progress)


def encode_stage(model_path, features_path, out, settings, device, index_dir=None, manifest=None):
    encode.run({"device": "cpu", **settings}, model_path, features_path, out, index_dir=index_dir, manifest=manifest)

CPU = torch.device("cpu")
TINY = {"hidden": 32, "critic_hidden": 16, "critic_dim": 16, "disc_hidden": 16, "epochs": 2, "batch_size": 10}


@pytest.fixture(scope="module")
def run(tiny_demo, tmp_path_factory):
    """Features (tags text), a model, codes and an index for the 40-pair demo."""
    d = tmp_path_factory.mktemp("run")
    s = {"dataset": "t", "seed": 0, "n_query": 8, "n_train": 20,
         "image_features": {"weights": "random", "pca_dim": 6, "batch_size": 16, "input_size": 64},
         "text_features": {"kind": "tags"}}
    extract.run_image(tiny_demo, s, d / "fc7.h5", CPU, progress=False)
    extract.run_text(tiny_demo, s, d / "text.h5", CPU, progress=False)
    extract.run_assemble(tiny_demo, d / "fc7.h5", d / "text.h5", s, d / "features.h5")
    f = read_features(d / "features.h5")
    model, _ = train_cmimh(f.image[f.train], f.text[f.train], 12, TINY, 0, CPU, progress=False)
    save_model(d / "model.pt", model, {"bits": 12})
    encode_stage(d / "model.pt", d / "features.h5", d / "codes.h5", s, CPU, index_dir=d / "index", manifest=tiny_demo)
    return d, f, model


def test_codes_follow_the_contract_and_match_the_model(run):
    d, f, model = run
    c = read_codes(d / "codes.h5")
    assert c.bits == 12 and c.n_query == 8 and c.n_db == 32
    np.testing.assert_array_equal(unpack_bits(c.db_image, 12), model.encode_image(f.image[f.database]))
    np.testing.assert_array_equal(unpack_bits(c.query_text, 12), model.encode_text(f.text[f.query]))
    np.testing.assert_array_equal(c.query_labels, f.labels[f.query])
    diag = json.loads(c.attrs["diagnostics"])
    assert set(diag) == {"corr_mse_image", "corr_mse_text", "tc_image", "tc_text"}
    assert list(c.db_ids) == list(f.ids[f.database])


def test_index_search_ranks_by_hamming_with_index_ties(run, tiny_demo):
    d, f, model = run
    index = load_index(d / "index")
    img = tiny_demo.parent / "images" / f"{f.ids[f.database[0]]}.jpg"
    hits = search(index, image=str(img), k=5)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5] and all(h["target"] == "text" for h in hits)
    # independent check: the database item's own image code against all text codes
    q = np.packbits(model.encode_image(f.image[f.database[:1]]), axis=1)
    dist = hamming_distances(q, index.db_text)[0].astype(int)
    order = np.lexsort((np.arange(len(dist)), dist))[:5]
    assert [h["id"] for h in hits] == [index.item_id(j) for j in order]
    assert [h["distance"] for h in hits] == list(dist[order])


def test_text_query_on_a_tag_index(run):
    d, f, _ = run
    index = load_index(d / "index")
    hits = search(index, text="a red ball and a star", k=3)
    assert len(hits) == 3 and hits[0]["target"] == "image"
    with pytest.raises(PipelineError, match="none of the query's words"):
        search(index, text="zzzz qqqq", k=3)


def test_search_bad_input_is_one_line(run, tmp_path):
    d, _, _ = run
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    cmimh = str(Path(sys.executable).parent / "cmimh")
    for args, needle in ((["--image", str(bad)], "unreadable image"),
                         (["--image", str(tmp_path / "none.jpg")], "image not found"),
                         (["--text", "   "], "empty --text query")):
        p = subprocess.run([cmimh, "search", str(d / "index"), *args], capture_output=True, text=True)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = subprocess.run([cmimh, "search", str(tmp_path), "--text", "ball"], capture_output=True, text=True)
    assert p.returncode == 2 and "not an index folder" in p.stderr


def test_index_records_the_extractors_of_its_features(run):
    d, _, _ = run
    meta = json.loads((d / "index" / "index.json").read_text())
    assert meta["extractors"]["image"]["weights"] == "random" and meta["extractors"]["image"]["input_size"] == 64
    assert meta["extractors"]["text"] == {"kind": "tags"}


def test_index_of_imported_features_refuses_raw_queries_in_one_line(tmp_path, capsys):
    from conftest import make_features_h5
    from pipeline.cli import main

    src = make_features_h5(tmp_path / "mine.h5", splits=True)
    feats = tmp_path / "features.h5"
    extract.run_import(src, {"dataset": "x", "seed": 0}, feats)
    f = read_features(feats)
    model, _ = train_cmimh(f.image[f.train], f.text[f.train], 8, TINY, 0, CPU, progress=False)
    save_model(tmp_path / "model.pt", model, {})
    encode_stage(tmp_path / "model.pt", feats, tmp_path / "codes.h5", {"dataset": "x", "seed": 0}, CPU,
                 index_dir=tmp_path / "index")
    for args in (["--text", "a red ball"], ["--image", str(tmp_path / "any.jpg")]):
        assert main(["search", str(tmp_path / "index"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert "its features were imported" in err and "extractor that made them is unknown" in err
        assert "\n" not in err and "Traceback" not in err


def test_damaged_index_and_undecodable_text_are_one_line(run, tmp_path, capsys):
    import shutil

    from pipeline.cli import main

    d, _, _ = run
    idx = tmp_path / "index"
    shutil.copytree(d / "index", idx)
    assert main(["search", str(idx), "--text", "caf\udce9 ball"]) == 2  # what Python makes of bytes b"caf\xe9"
    assert "--text is not valid UTF-8" in capsys.readouterr().err
    (idx / "index.json").write_text("{not json")
    assert main(["search", str(idx), "--text", "ball"]) == 2
    assert "index.json: damaged" in capsys.readouterr().err
    shutil.copyfile(d / "index" / "index.json", idx / "index.json")
    data = (idx / "index.h5").read_bytes()
    (idx / "index.h5").write_bytes(data[: len(data) // 3])
    assert main(["search", str(idx), "--text", "ball"]) == 2
    err = capsys.readouterr().err.strip()
    assert "index.h5" in err and "\n" not in err and "Traceback" not in err


def test_a_16_bit_query_image_finds_what_its_8_bit_copy_finds(run, tiny_demo, tmp_path):
    """The query image is decoded as extraction decodes it: a 16-bit grey scan is scaled, not
    clipped to white (which ranked the database against a blank picture)."""
    from PIL import Image

    from pipeline.search.index import image_query_features

    d, f, _ = run
    index = load_index(d / "index")
    src = tiny_demo.parent / "images" / f"{f.ids[f.database[0]]}.jpg"
    grey = np.asarray(Image.open(src).convert("L"))
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    a, b = image_query_features(index, [tmp_path / "g8.png", tmp_path / "g16.png"])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_folder_or_a_huge_image_as_the_query_is_one_line(run, tmp_path, monkeypatch):
    from PIL import Image

    d, _, _ = run
    index = load_index(d / "index")
    with pytest.raises(PipelineError, match="is a directory, not an image file"):
        search(index, image=str(tmp_path), k=3)
    Image.new("L", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4,096 pixels: over twice the limit
    with pytest.raises(PipelineError, match=r"unreadable image: .*big\.png \(DecompressionBombError"):
        search(index, image=str(tmp_path / "big.png"), k=3)


def test_index_holds_what_a_hit_needs_to_be_shown(run, tiny_demo):
    """Each hit carries the item's caption and image file (from the data set's manifest)."""
    from pipeline.data.manifest import read_manifest

    d, f, _ = run
    m = read_manifest(tiny_demo)
    by_id = {p.id: p for p in m.pairs}
    index = load_index(d / "index")
    assert isinstance(index.db_image, np.memmap)  # codes mapped from index.h5, not copied
    assert json.loads((d / "index" / "index.json").read_text())["media"]["root"] == str(tiny_demo.parent.resolve())
    for h in search(index, text="a red ball and a star", k=5):
        assert h["caption"] == by_id[h["id"]].caption
        assert Path(h["image"]) == (tiny_demo.parent / by_id[h["id"]].image).resolve()
        assert Path(h["image"]).is_file()


def test_index_refuses_a_manifest_that_did_not_make_its_features(run, tiny_demo, tmp_path):
    import shutil

    d, f, model = run
    other = tmp_path / "data"
    shutil.copytree(tiny_demo.parent, other)
    (other / "manifest.jsonl").write_text((other / "manifest.jsonl").read_text().replace("ball", "bell"))
    with pytest.raises(PipelineError, match="not the manifest the features were made from"):
        encode_stage(d / "model.pt", d / "features.h5", tmp_path / "codes.h5", {"dataset": "t", "seed": 0}, CPU,
                     index_dir=tmp_path / "index", manifest=other / "manifest.jsonl")
    assert not (tmp_path / "index").exists()


def test_batch_search_equals_single_searches(run, tiny_demo):
    from pipeline.search.index import search_batch

    d, f, _ = run
    index = load_index(d / "index")
    texts = ["a red ball and a star", "blue square", "a green triangle next to a ball", "star"]
    assert search_batch(index, texts=texts, k=7) == [search(index, text=t, k=7) for t in texts]
    imgs = [tiny_demo.parent / "images" / f"{f.ids[f.database[i]]}.jpg" for i in (0, 3, 5)]
    assert search_batch(index, images=imgs, k=4, target="image") == \
        [search(index, image=str(p), k=4, target="image") for p in imgs]
    with pytest.raises(PipelineError, match="at most"):
        search_batch(index, texts=["ball"] * 1001, k=1)


def test_cli_batch_queries_file_equals_single_searches(run, tiny_demo, tmp_path):
    d, f, _ = run
    img = tiny_demo.parent / "images" / f"{f.ids[f.database[2]]}.jpg"
    qf = tmp_path / "queries.txt"
    qf.write_text("a red ball and a star\n\n" + json.dumps({"text": "blue square"}) + "\n" +
                  json.dumps({"image": str(img)}) + "\n")
    cmimh = str(Path(sys.executable).parent / "cmimh")
    p = subprocess.run([cmimh, "search", str(d / "index"), "--queries", str(qf), "-k", "5"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [x["query"] for x in lines] == [1, 2, 3] and lines[2]["image"] == str(img)
    index = load_index(d / "index")
    assert lines[0]["hits"] == search(index, text="a red ball and a star", k=5)
    assert lines[1]["hits"] == search(index, text="blue square", k=5)
    assert lines[2]["hits"] == search(index, image=str(img), k=5)
    single = subprocess.run([cmimh, "search", str(d / "index"), "--text", "blue square", "-k", "5"],
                            capture_output=True, text=True)
    assert [json.loads(x) for x in single.stdout.splitlines()] == lines[1]["hits"]
    bad = tmp_path / "bad.txt"
    bad.write_text('{"txt": "x"}\n')
    p = subprocess.run([cmimh, "search", str(d / "index"), "--queries", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2 and "bad.txt:1" in p.stderr and "Traceback" not in p.stderr


TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                              "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


@pytest.mark.parametrize("image_model, text", [
    ("clip", "clip"),
    ("resnet50", {"kind": "bow", "vocab_size": 50, "min_count": 1}),
    ("alexnet", {"kind": "sentence", "precision": "bf16", "batch_size": 16}),
], ids=["clip-clip", "resnet50-bow", "alexnet-sentence-bf16"])
def test_a_query_is_encoded_exactly_as_the_database_was(tiny_demo, tmp_path, image_model, text):
    """The index rebuilds the extractors from the records its features file keeps: a database image
    or caption given as a query gets its own features row back (so its own codes)."""
    from pipeline.data.manifest import read_manifest
    from pipeline.search.index import image_query_features, text_query_features

    cfg = tmp_path / "TinyCLIP.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    if image_model == "clip":
        img = {"model": f"clip:{cfg}", "weights": "random", "pca_dim": 6, "batch_size": 16}
        text = {"kind": "clip", "model": f"clip:{cfg}", "weights": "random", "batch_size": 16}
    else:
        img = {"model": image_model, "weights": "random", "pca_dim": 6, "batch_size": 16, "input_size": 64}
    s = {"dataset": "t", "seed": 0, "n_query": 8, "n_train": 20, "image_features": img, "text_features": text}
    extract.run_image(tiny_demo, s, tmp_path / "image.h5", CPU, progress=False)
    extract.run_text(tiny_demo, s, tmp_path / "text.h5", CPU, progress=False)
    extract.run_assemble(tiny_demo, tmp_path / "image.h5", tmp_path / "text.h5", s, tmp_path / "features.h5")
    f = read_features(tmp_path / "features.h5")
    model, _ = train_cmimh(f.image[f.train], f.text[f.train], 8, TINY, 0, CPU, progress=False)
    save_model(tmp_path / "model.pt", model, {"bits": 8})
    encode_stage(tmp_path / "model.pt", tmp_path / "features.h5", tmp_path / "codes.h5", s, CPU,
                 index_dir=tmp_path / "index")
    index = load_index(tmp_path / "index")
    m = read_manifest(tiny_demo)
    row = int(f.database[0])
    pair = m.pairs[[p.id for p in m.pairs].index(f.ids[row])]
    q_img = image_query_features(index, [m.root / pair.image])
    q_txt = text_query_features(index, [pair.caption])
    np.testing.assert_allclose(q_img[0], f.image[row], rtol=1e-4, atol=1e-4)
    bf16 = isinstance(text, dict) and text.get("precision") == "bf16"  # its queries in bf16 too (the record)
    if bf16:
        assert index.encoders["text"].precision == "bf16"
        fresh = load_index(tmp_path / "index")
        load_query_encoder(fresh, "text")
        assert fresh.encoders["text"].traced, "loading the query encoder traces it, not the first query"
    np.testing.assert_allclose(q_txt[0], f.text[row], rtol=1e-4, atol=2e-2 if bf16 else 1e-5)
    hits = search(index, image=str(m.root / pair.image), k=3)
    assert len(hits) == 3


def test_string_columns_read_in_memory_or_from_disk_alike(run, monkeypatch):
    """A small column is read once into memory, a long one per query: the same strings, in the
    order asked, repeats allowed."""
    from pipeline.search import index as index_mod

    d, _, _ = run
    mem = load_index(d / "index").captions
    last = len(mem) - 1
    rows = [5, 0, 5, last, 17, 0]
    got_mem = mem.take(rows)
    assert mem._all is not None
    monkeypatch.setattr(index_mod, "STRINGS_IN_MEMORY", 0)
    disk = load_index(d / "index").captions
    assert disk.take(rows) == got_mem and disk._all is None
    assert got_mem[0] == got_mem[2] and mem[last] == got_mem[3] and mem.take([]) == []


def test_text_precision_of_queries(run, caplog):
    """--text-precision: one line for a bad value; on a tag index it does not apply (said in the log)."""
    d, _, _ = run
    with pytest.raises(PipelineError, match="--text-precision must be fp32 or bf16"):
        load_index(d / "index", text_precision="fp16")
    index = load_index(d / "index", text_precision="bf16")
    with caplog.at_level("INFO"):
        assert len(search(index, text="a red ball", k=3)) == 3
    assert "does not apply" in caplog.text
