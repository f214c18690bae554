"""Shards and their merge, streaming PCA and chunked projection, assembly checks
(pipeline/features/extract.py)."""

import json

import h5py
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from pipeline.cli import main
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError
from pipeline.features import extractors, pca
from pipeline.stages import extract
from pipeline.io import write_strings

CPU = torch.device("cpu")


@pytest.fixture
def cached_network(monkeypatch):
    """Build the random AlexNet once for the five runs below; extraction never modifies it."""
    real = extractors.image_extractor
    built = {}

    def cached(record, device=None, channels_last=None):
        key = json.dumps([record, channels_last], sort_keys=True)
        if key not in built:
            built[key] = real(record, channels_last=channels_last)
        return built[key]

    monkeypatch.setattr(extractors, "image_extractor", cached)


def img_settings(**over):
    f = {"weights": "random", "batch_size": 5, "chunk_batches": 1, "input_size": 64}
    f.update(over)
    return {"dataset": "t", "seed": 0, "image_features": f}


def test_shards_merged_equal_the_unsharded_run(tiny_demo, tmp_path, cached_network):
    whole = tmp_path / "fc7.h5"
    extract.run_image(tiny_demo, img_settings(), whole, CPU, progress=False)
    parts = [tmp_path / f"shard_{i}_of_4.h5" for i in range(4)]  # 10 rows each = 2 batches of 5
    for i, p in enumerate(parts):
        extract.run_image(tiny_demo, img_settings(), p, CPU, progress=False, shard=(i, 4))
    merged = tmp_path / "merged.h5"
    # through the command line, shards in any order
    assert main(["extract", "merge", "--no-progress", "--manifest", str(tiny_demo), "--parts",
                 *map(str, parts[::-1]), "-o", str(merged)]) == 0
    with h5py.File(whole) as a, h5py.File(merged) as b:
        assert np.array_equal(a["image"][()], b["image"][()])
        assert np.array_equal(a["ok"][()], b["ok"][()]) and list(a["ids"][()]) == list(b["ids"][()])
        assert (b.attrs["shards"], b.attrs["row_start"], b.attrs["row_stop"], b.attrs["n_total"]) == (4, 0, 40, 40)
        assert b.attrs["weights"] == "random" and b.attrs["n_bad_images"] == 0 and "shard" not in b.attrs


def fake_shard(path, start, stop, n, ids, bad=(), **attrs):
    """A small shard file written by hand (zero features), to test the merge's checks cheaply."""
    with h5py.File(path, "w") as f:
        f["image"] = np.full((stop - start, 4096), start, np.float32)
        ok = np.ones(stop - start, np.uint8)
        ok[[ids.index(b) for b in bad]] = 0
        f["ok"] = ok
        write_strings(f, "ids", ids)
        f.attrs.update({"row_start": start, "row_stop": stop, "n_total": n, "weights": "random",
                        "weights_source": "seed=0", "input_size": 64, "on_bad_image": "drop",
                        "n_bad_images": len(bad), "bad_image_ids": json.dumps(list(bad)), **attrs})
    return path


def test_merge_collects_dropped_ids_and_copies_rows(tmp_path):
    a = fake_shard(tmp_path / "a.h5", 0, 3, 5, ["x0", "x1", "x2"], bad=["x1"])
    b = fake_shard(tmp_path / "b.h5", 3, 5, 5, ["x3", "x4"], bad=["x4"])
    extract.run_merge([b, a], tmp_path / "m.h5", progress=False, chunk_rows=2)
    with h5py.File(tmp_path / "m.h5") as f:
        assert f["image"][:, 0].tolist() == [0, 0, 0, 3, 3]
        assert f["ok"][()].tolist() == [1, 0, 1, 1, 0]
        assert json.loads(f.attrs["bad_image_ids"]) == ["x1", "x4"] and f.attrs["n_bad_images"] == 2


@pytest.mark.parametrize("case, needle", [
    ("gap", "starts at row 3, expected 2 .missing shard."),
    ("overlap", "starts at row 2, expected 3 .overlap."),
    ("short", "cover rows 0..3 of 5: missing shard"),
    ("weights", "weights_source differs"),
])
def test_merge_rejects_inconsistent_shards(tmp_path, case, needle):
    a = fake_shard(tmp_path / "a.h5", 0, 2 if case == "gap" else 3, 5, ["x0", "x1", "x2"][:2 if case == "gap" else 3])
    start = {"overlap": 2}.get(case, 3)
    extra = {"weights_source": "seed=1"} if case == "weights" else {}
    stop = 3 if case == "short" else 5
    if case == "short":
        parts = [a]
    else:
        parts = [a, fake_shard(tmp_path / "b.h5", start, stop, 5, [f"x{i}" for i in range(start, stop)], **extra)]
    with pytest.raises(PipelineError, match=needle):
        extract.run_merge(parts, tmp_path / "m.h5", progress=False)
    assert not (tmp_path / "m.h5").exists()


def test_merge_rejects_ids_other_than_the_manifests(tiny_demo, tmp_path):
    ids = [p.id for p in read_manifest(tiny_demo).pairs]
    a = fake_shard(tmp_path / "a.h5", 0, 40, 40, ids[::-1])
    with pytest.raises(PipelineError, match="stale shard files"):
        extract.run_merge([a], tmp_path / "m.h5", manifest=tiny_demo, progress=False)


def test_cli_shard_needs_shards():
    assert main(["extract", "image", "--shard", "1", "--settings", '{"dataset": "t"}', "-o", "x.h5"]) == 2


def low_rank(n=600, d=24, seed=0):
    """Rows with a clear spectrum: 6 strong directions plus small isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, 6)))[0]
    scales = np.array([10.0, 8.0, 6.0, 4.0, 3.0, 2.0])
    return (rng.normal(size=(n, 6)) * scales @ basis.T + 0.1 * rng.normal(size=(n, d)) + 5.0).astype(np.float32)


def same_components(a, b, atol):
    """Equal up to the sign of each row (both sides use sklearn's sign convention, but be safe)."""
    signs = np.sign((a * b).sum(1))
    np.testing.assert_allclose(a * signs[:, None], b, atol=atol)


@pytest.mark.parametrize("n_train", [20, 300])  # fewer rows than dimensions (SVD), more (covariance)
def test_pca_is_the_exact_pca_of_the_training_rows(n_train):
    x = low_rank()
    train = np.random.default_rng(2).choice(600, n_train, replace=False)
    got = pca.fit_pca(x, train, 5, seed=0, chunk_rows=64)
    ref = PCA(n_components=5, svd_solver="full").fit(x[np.sort(train)].astype(np.float64))
    np.testing.assert_allclose(got["mean"], ref.mean_, rtol=1e-5, atol=1e-5)
    same_components(got["components"], ref.components_, atol=1e-4)
    np.testing.assert_allclose(got["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-4)
    assert got["components"].dtype == np.float32 and got["components"].shape == (5, 24)


def test_streamed_pca_from_hdf5_does_not_depend_on_the_chunking(tmp_path):
    x = low_rank()
    train = np.arange(1, 600, 3)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = x
    with h5py.File(tmp_path / "x.h5") as f:
        small = pca.fit_pca(f["x"], train, 6, seed=0, chunk_rows=7)
        big = pca.fit_pca(f["x"], train, 6, seed=0, chunk_rows=10_000)
    for k in small:
        np.testing.assert_allclose(small[k], big[k], rtol=1e-5, atol=1e-6)
    # the sign convention: the largest entry of each component is positive
    c = small["components"]
    assert (c[np.arange(6), np.abs(c).argmax(1)] > 0).all()


@pytest.mark.parametrize("rows", ["dense", "sparse"])
def test_apply_in_chunks_equals_apply_at_once(tmp_path, rows):
    x = low_rank(n=200)
    fitted = pca.fit_pca(x, np.arange(200), 4, seed=0)
    idx = np.setdiff1d(np.arange(200), [3, 50, 51]) if rows == "dense" else np.arange(0, 200, 7)
    idx = np.random.default_rng(1).permutation(idx)  # any order: results follow it
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = x
    with h5py.File(tmp_path / "x.h5") as f:
        got = pca.apply_pca_rows(f["x"], idx, fitted, chunk_rows=16)
    want = pca.apply_pca(x[idx], fitted)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (len(idx), 4)


def test_assemble_rejects_fc7_of_other_ids(tiny_demo, tmp_path):
    ids = [p.id for p in read_manifest(tiny_demo).pairs]
    fake_shard(tmp_path / "fc7.h5", 0, 40, 40, ids[1:] + ids[:1])
    with h5py.File(tmp_path / "text.h5", "w") as f:
        f["text"] = np.zeros((40, 3), np.float32)
    s = {**img_settings(pca_dim=2), "n_query": 5, "n_train": 10, "text_features": {"kind": "tags"}}
    with pytest.raises(PipelineError, match="ids differ from"):
        extract.run_assemble(tiny_demo, tmp_path / "fc7.h5", tmp_path / "text.h5", s, tmp_path / "f.h5")


# ----------------------------------------------------------------------------- stale intermediate files
def _assemble_settings(**image_over):
    return {**img_settings(pca_dim=2, **image_over), "n_query": 5, "n_train": 10, "text_features": {"kind": "tags"}}


@pytest.fixture
def extracted(tiny_demo, tmp_path, cached_network):
    """fc7.h5 and text.h5 of the tiny demo, made with _assemble_settings()."""
    s = _assemble_settings()
    extract.run_image(tiny_demo, s, tmp_path / "fc7.h5", CPU, progress=False)
    extract.run_text(tiny_demo, s, tmp_path / "text.h5", CPU, progress=False)
    return tmp_path / "fc7.h5", tmp_path / "text.h5"


@pytest.mark.parametrize("change, needle", [
    ({"input_size": 96}, "made with image_features.input_size=64 but the settings say 96"),
    ({"on_bad_image": "drop"}, "made with image_features.on_bad_image='error' but the settings say 'drop'"),
    ({"weights": "imagenet"}, "made with image_features.weights='random' but the settings say 'imagenet'"),
])
def test_assemble_refuses_fc7_made_with_other_settings(tiny_demo, tmp_path, extracted, change, needle):
    fc7, txt = extracted
    with pytest.raises(PipelineError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
        extract.run_assemble(tiny_demo, fc7, txt, _assemble_settings(**change), tmp_path / "f.h5")
    assert "snakemake --forcerun extract_image" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "f.h5").exists()
    extract.run_assemble(tiny_demo, fc7, txt, _assemble_settings(), tmp_path / "f.h5")  # the matching settings work


def test_assemble_refuses_fc7_of_other_images_and_text_of_other_settings(tiny_demo, tmp_path, extracted):
    fc7, txt = extracted
    root = tmp_path / "demo"
    import shutil

    shutil.copytree(tiny_demo.parent, root)
    lines = (root / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    rec["sha256"] = "0" * 64  # the manifest now says the image is another file
    lines[2] = json.dumps(rec)
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match="made from other images than"):
        extract.run_assemble(root / "manifest.jsonl", fc7, txt, _assemble_settings(), tmp_path / "f.h5")
    s = {**_assemble_settings(), "text_features": {"kind": "sentence"}}
    with pytest.raises(PipelineError, match="made with text_features.kind='tags' but the settings say 'sentence'"):
        extract.run_assemble(tiny_demo, fc7, txt, s, tmp_path / "f.h5")


def test_assemble_refuses_files_without_recorded_settings(tiny_demo, tmp_path):
    ids = [p.id for p in read_manifest(tiny_demo).pairs]
    fake_shard(tmp_path / "fc7.h5", 0, 40, 40, ids)
    with h5py.File(tmp_path / "text.h5", "w") as f:
        f["text"] = np.zeros((40, 3), np.float32)
    with pytest.raises(PipelineError, match="no recorded image_features settings"):
        extract.run_assemble(tiny_demo, tmp_path / "fc7.h5", tmp_path / "text.h5", _assemble_settings(),
                             tmp_path / "f.h5")
