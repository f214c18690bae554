"""The embedded demo data set: deterministic, well-formed, and not trivially aligned."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.data import demo
from pipeline.data.demo import (CLASSES, NOISE_PHRASES, SYNONYMS, TAG_VOCAB,
                                generate_demo, summarize)
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError
from pipeline.io import sha256_file

N, SIZE = 60, 64


def caption_classes(caption: str) -> set[int]:
    """Indices of the classes a caption names (by any synonym, whole words): the test's own reading."""
    text = caption.lower()
    found = set()
    for c, name in enumerate(CLASSES):
        for word in SYNONYMS[name]:
            if re.search(rf"\b{re.escape(word)}\b", text):
                found.add(c)
                break
    return found


def _hashes(root):
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_small")
    return generate_demo(root, n_pairs=N, seed=0, image_size=SIZE, progress=False)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_large")
    return read_manifest(generate_demo(root, n_pairs=300, seed=1, image_size=SIZE, progress=False))


def test_deterministic_bytes(small, tmp_path):
    again = generate_demo(tmp_path / "again", n_pairs=N, seed=0, image_size=SIZE, progress=False)
    a, b = _hashes(small.parent), _hashes(again.parent)
    assert set(a) == {"manifest.jsonl", "meta.json"} | {f"images/{i:06d}.jpg" for i in range(N)}
    assert a == b


def test_different_seed_differs(small, tmp_path):
    other = generate_demo(tmp_path / "other", n_pairs=N, seed=1, image_size=SIZE, progress=False)
    a, b = _hashes(small.parent), _hashes(other.parent)
    assert a["manifest.jsonl"] != b["manifest.jsonl"]
    same = sum(a[k] == b[k] for k in a if k.startswith("images/"))
    assert same == 0


def test_items_independent_of_run_length(small, tmp_path):
    """Item i comes from default_rng([seed, i]): a shorter run reproduces the prefix."""
    short = generate_demo(tmp_path / "short", n_pairs=10, seed=0, image_size=SIZE, progress=False)
    a, b = read_manifest(small), read_manifest(short)
    assert [p.to_json() for p in a.pairs[:10]] == [p.to_json() for p in b.pairs]


def test_rerun_smaller_removes_stale_images(tmp_path):
    generate_demo(tmp_path, n_pairs=12, seed=0, image_size=SIZE, progress=False)
    generate_demo(tmp_path, n_pairs=5, seed=0, image_size=SIZE, progress=False)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == \
        [f"{i:06d}.jpg" for i in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "manifest.jsonl", "meta.json"]


def test_structure(small):
    m = read_manifest(small)
    assert len(m.pairs) == N
    assert len(m.classes) >= 10 and m.classes == CLASSES
    assert m.meta["dataset"] == "demo"
    prov = m.meta["provenance"]
    assert (prov["n_pairs"], prov["seed"], prov["image_size"]) == (N, 0, SIZE)
    assert prov["version"] == demo.GENERATOR_VERSION
    assert m.tag_vocab == sorted(set(m.tag_vocab)) and len(m.tag_vocab) >= 40
    for i, p in enumerate(m.pairs):
        assert p.id == f"{i:06d}" and p.image == f"images/{p.id}.jpg"
        assert p.split is None
        assert p.sha256 == sha256_file(m.image_path(i))
        with Image.open(m.image_path(i)) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE, SIZE)
            assert np.asarray(im).std() > 10  # not a blank picture
        assert 1 <= len(p.labels) <= 4
        assert p.labels == sorted(set(p.labels))
        assert all(0 <= c < len(m.classes) for c in p.labels)
        assert p.caption.strip() and p.caption == p.caption.strip()
        assert 2 <= len(p.tags) <= 10 and len(set(p.tags)) == len(p.tags)
        assert all(t == t.lower() and t in m.tag_vocab for t in p.tags)
    # manifest lines are plain JSON with the documented keys
    first = json.loads(small.read_text().splitlines()[0])
    assert set(first) == {"id", "image", "sha256", "caption", "tags", "labels", "split"}


def test_captions_name_real_objects(large):
    """Text is informative: most captions name at least one object present."""
    hits = [bool(caption_classes(p.caption) & set(p.labels)) for p in large.pairs]
    assert np.mean(hits) > 0.85
    tag_hits = [bool({large.classes.index(t) for t in p.tags if t in large.classes}
                     & set(p.labels)) for p in large.pairs]
    assert np.mean(tag_hits) > 0.85


def test_not_trivial(large):
    """Captions miss objects, name absent ones, and add unrelated phrases."""
    missed = total = 0
    wrong_object = noise_phrase = 0
    for p in large.pairs:
        named = caption_classes(p.caption)
        total += len(p.labels)
        missed += len(set(p.labels) - named)
        wrong_object += bool(named - set(p.labels))
        noise_phrase += any(ph in p.caption.lower() for ph in NOISE_PHRASES)
    assert missed / total > 0.15
    assert 0.03 < wrong_object / len(large.pairs) < 0.25
    assert noise_phrase / len(large.pairs) > 0.1
    # synonyms are used, not only class names
    words = " ".join(p.caption.lower() for p in large.pairs)
    used_synonyms = sum(any(re.search(rf"\b{s}\b", words) for s in syn[1:])
                        for syn in SYNONYMS.values())
    assert used_synonyms >= 8
    # captions vary
    assert len({p.caption for p in large.pairs}) > 0.9 * len(large.pairs)


def test_class_frequencies_vary(large):
    counts = large.label_matrix().sum(axis=0)
    assert counts.min() > 0
    assert counts.max() > 2.5 * counts.min()
    n_objects = large.label_matrix().sum(axis=1)
    assert set(np.unique(n_objects)) == {1, 2, 3, 4}


def test_noise_phrases_name_no_class():
    assert all(not caption_classes(ph) for ph in NOISE_PHRASES)
    assert set(CLASSES) <= set(TAG_VOCAB)


def test_caption_classes():
    assert caption_classes("A big red Sphere next to a hut.") == {CLASSES.index("ball"),
                                                                  CLASSES.index("house")}
    assert caption_classes("a barn near the bark") == set()


def test_summarize(small):
    s = summarize(small)
    m = read_manifest(small)
    assert s["n_pairs"] == N
    assert list(s["class_counts"]) == CLASSES
    assert sum(s["class_counts"].values()) == sum(len(p.labels) for p in m.pairs)
    assert s["mean_objects"] == pytest.approx(np.mean([len(p.labels) for p in m.pairs]))
    assert 1.0 <= s["mean_objects"] <= 4.0
    assert s["mean_caption_words"] > 2
    json.dumps(s)  # plain types, loggable


@pytest.mark.parametrize("kwargs", [
    {"n_pairs": 0}, {"n_pairs": -5}, {"image_size": 31}, {"image_size": 0}, {"seed": -1},
    {"n_pairs": 2.5}, {"n_pairs": "10"}, {"image_size": True},
])
def test_bad_arguments(tmp_path, kwargs):
    args = {"n_pairs": 3, "seed": 0, "image_size": 32, "progress": False} | kwargs
    with pytest.raises(PipelineError) as e:
        generate_demo(tmp_path, **args)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "manifest.jsonl").exists()


def test_smallest_valid(tmp_path):
    mp = generate_demo(tmp_path, n_pairs=1, seed=0, image_size=32, progress=False)
    m = read_manifest(mp)
    assert len(m.pairs) == 1
    with Image.open(m.image_path(0)) as im:
        assert im.size == (32, 32)
