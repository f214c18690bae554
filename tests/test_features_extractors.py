"""Each feature extractor (pipeline/features/extractors/): the real architecture with seeded random
weights (a tiny CLIP config for CLIP; the offline MiniLM for text): its shape, its preprocessing,
the features it is documented to give, determinism, and its weights resolved and recorded."""

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.features import extractors
from pipeline.features.extractors import base, bow
from pipeline.features.settings import ImageFeatures, TextFeatures

#: A tiny open_clip config (the real CLIP architecture: ViT image tower, transformer text tower,
#: joint projection), small enough for random initialisation in a second.
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                              "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def picture(w=48, h=40, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def batch(ex, n=2):
    return torch.stack([ex.preprocess(picture(seed=i)) for i in range(n)])


# (model, input size, dim) with random weights: small inputs keep each forward pass fast
TORCHVISION = [("alexnet", 64, 4096), ("vgg19", 32, 4096), ("resnet50", 64, 2048), ("vit_b_16", 32, 768)]


@pytest.fixture(scope="module")
def built():
    return {m: extractors.image_extractor({"model": m, "weights": "random", "seed": 3, "input_size": s})
            for m, s, _ in TORCHVISION}


@pytest.fixture(scope="module")
def reference():
    """torchvision's own networks from the same seed: what each extractor must compute (built once)."""
    out = {}
    for m, size, _ in TORCHVISION:
        with base.seeded(3):
            out[m] = getattr(torchvision.models, m)(weights=None, **({"image_size": size} if m == "vit_b_16" else {}))
        out[m].eval()
    return out


@pytest.mark.parametrize("model, size, dim", TORCHVISION)
def test_torchvision_extractors_shape_preprocessing_and_determinism(built, reference, model, size, dim):
    ex = built[model]
    assert ex.name == model and ex.dim == dim and ex.input_size == size
    assert ex.weights.name == "random" and ex.weights.source == "seed=3" and ex.weights.sha256 is None
    x = ex.preprocess(picture())  # any size in: the crop the network takes out, ImageNet-normalised
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    grey = ex.preprocess(Image.new("RGB", (size * 2, size), (124, 116, 104)))  # ~ the ImageNet mean colour
    assert grey.abs().max() < 0.05
    out = ex.encode(batch(ex))
    assert out.shape == (2, dim) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(ex.encode(batch(ex)), out)  # deterministic in eval mode (no dropout)
    # the seed decides the weights: every parameter is torchvision's initialisation from that seed
    ours = dict(ex.net.named_parameters())
    theirs = {k: v for k, v in reference[model].named_parameters()}
    for name, p in ours.items():
        assert any(q.shape == p.shape and torch.equal(q, p) for q in theirs.values()), name


def test_alexnet_and_vgg19_are_fc7_after_relu(built, reference):
    for model, fc7 in (("alexnet", lambda c, h: c[5](c[4](c[2](c[1](h))))),  # (dropout), FC6, ReLU, (dropout), FC7, ReLU
                       ("vgg19", lambda c, h: c[4](c[3](c[1](c[0](h)))))):   # FC6, ReLU, (dropout), FC7, ReLU
        ex, net = built[model], reference[model]
        x = batch(ex)
        with torch.no_grad():
            expected = fc7(net.classifier, torch.flatten(net.avgpool(net.features(x)), 1))
        got = ex.encode(x)
        assert (got >= 0).all()
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_resnet50_is_the_pooled_layer4_and_vit_the_class_token(built, reference):
    r, net = built["resnet50"], reference["resnet50"]
    x = batch(r)
    with torch.no_grad():
        feats = torch.nn.Sequential(*list(net.children())[:-1])(x).flatten(1)
    np.testing.assert_allclose(r.encode(x), feats.numpy(), rtol=1e-5, atol=1e-5)
    v, vit = built["vit_b_16"], reference["vit_b_16"]
    x = batch(v)
    with torch.no_grad():
        tokens = vit.encoder(torch.cat([vit.class_token.expand(2, -1, -1), vit._process_input(x)], dim=1))
    np.testing.assert_allclose(v.encode(x), tokens[:, 0].numpy(), rtol=1e-5, atol=1e-5)


def test_same_seed_same_network_other_seed_differs():
    a = extractors.image_extractor({"model": "alexnet", "weights": "random", "seed": 3, "input_size": 64})
    b = extractors.image_extractor({"model": "alexnet", "weights": "random", "seed": 4, "input_size": 64})
    x = batch(a)
    assert not np.allclose(a.encode(x), b.encode(x))


def test_a_fine_tuned_checkpoint_with_another_head_loads_and_is_recorded(tmp_path):
    with base.seeded(0):
        net = torchvision.models.resnet50(weights=None, num_classes=7)
    ckpt = tmp_path / "finetuned.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    ex = extractors.image_extractor({"model": "resnet50", "weights": str(ckpt), "input_size": 64})
    assert ex.weights.name == "checkpoint" and len(ex.weights.sha256) == 64
    torch.testing.assert_close(ex.net.conv1.weight, net.conv1.weight)
    wrong = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), wrong)
    with pytest.raises(PipelineError, match="cannot load ResNet-50 checkpoint .*missing keys"):
        extractors.image_extractor({"model": "resnet50", "weights": str(wrong)})


def test_vit_input_size_rules():
    with pytest.raises(PipelineError, match="multiple of 16"):
        extractors.image_extractor({"model": "vit_b_16", "weights": "random", "input_size": 40})
    with pytest.raises(PipelineError, match="ImageNet weights need 224"):
        extractors.image_extractor({"model": "vit_b_16", "weights": "imagenet", "input_size": 64})


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    p = tmp_path_factory.mktemp("clip") / "TinyCLIP-test.json"
    p.write_text(json.dumps(TINY_CLIP))
    return f"clip:{p}"


def test_clip_image_tower(tiny_clip):
    ex = extractors.image_extractor({"model": tiny_clip, "weights": "random", "seed": 1, "input_size": None})
    assert ex.dim == 32 and ex.input_size == 32 and ex.name == tiny_clip
    x = ex.preprocess(picture(60, 40))
    assert x.shape == (3, 32, 32)
    out = ex.encode(batch(ex, 3))
    assert out.shape == (3, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)  # CLIP's normalised embedding
    again = extractors.image_extractor({"model": tiny_clip, "weights": "random", "seed": 1, "input_size": None})
    np.testing.assert_array_equal(again.encode(batch(ex, 3)), out)
    other = extractors.image_extractor({"model": tiny_clip, "weights": "random", "seed": 2, "input_size": None})
    assert not np.allclose(other.encode(batch(ex, 3)), out)
    with pytest.raises(PipelineError, match="takes 32-pixel images, not 64"):
        extractors.image_extractor({"model": tiny_clip, "weights": "random", "input_size": 64})


def test_clip_text_tower_shares_the_image_towers_space(tiny_clip):
    rec = TextFeatures.from_dict({"kind": "clip", "model": tiny_clip, "weights": "random"}, "t").record(1)
    assert rec == {"kind": "clip", "model": tiny_clip, "weights": "random", "seed": 1}
    enc = extractors.text_extractor(rec)
    texts = ["a red ball", "a large green tree next to a house", "東京の猫"]
    out = enc.encode(texts)
    assert out.shape == (3, 32) and enc.dim == 32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(enc.encode(texts[:1]), out[:1], rtol=1e-5, atol=1e-6)  # a row alone = in a batch
    np.testing.assert_array_equal(extractors.text_extractor(rec).encode(texts), out)
    img = extractors.image_extractor({"model": tiny_clip, "weights": "random", "seed": 1})
    assert img.dim == enc.dim  # one joint space: cosine of image and text embeddings is CLIP's similarity


def test_clip_names_and_weights_are_checked(tiny_clip, tmp_path):
    with pytest.raises(PipelineError, match="unknown CLIP architecture 'ViT-Nope'"):
        extractors.image_extractor({"model": "clip:ViT-Nope", "weights": "random"})
    with pytest.raises(PipelineError, match="'nosuchtag' is neither a file nor a pretrained tag of ViT-B-32 .openai"):
        extractors.image_extractor({"model": "clip:ViT-B-32", "weights": "nosuchtag"})
    with pytest.raises(PipelineError, match="weights: clip:ViT-B-32 takes random"):
        ImageFeatures.from_dict({"model": "clip:ViT-B-32"}, "image_features")
    with pytest.raises(PipelineError, match="kind clip needs weights"):
        TextFeatures.from_dict({"kind": "clip", "model": "clip:ViT-B-32"}, "text_features")
    with pytest.raises(PipelineError, match="kind clip needs model: clip:ARCH"):
        TextFeatures.from_dict({"kind": "clip", "weights": "openai"}, "text_features")
    with pytest.raises(PipelineError, match="model must be one of alexnet, vgg19, resnet50, vit_b_16 or clip:ARCH"):
        ImageFeatures.from_dict({"model": "resnet18"}, "image_features")


def test_sentence_encoder_from_its_record():
    rec = TextFeatures.from_dict({}, "t").record()
    enc = extractors.text_extractor(rec)
    out = enc.query(["a red ball"])
    assert enc.dim == 384 and out.shape == (1, 384) and enc.inputs == "captions"
    np.testing.assert_allclose(enc.encode(["a red ball"]), out, rtol=1e-5, atol=1e-6)


def test_tag_vectors_query():
    enc = extractors.text_extractor({"kind": "tags"}, vocab=["ball", "red", "tree"])
    np.testing.assert_array_equal(enc.encode([["red", "zzz"], []]), [[0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(enc.query(["A RED ball!"]), [[1, 1, 0]])
    with pytest.raises(PipelineError, match="none of the query's words is a tag"):
        enc.query(["nothing known"])


def test_a_batch_query_with_an_unknown_text_anywhere_is_refused():
    """Every text of a batch is checked, not only the first: the search service batches concurrent
    queries and then answers each on its own, so the bad one fails alone (tests/test_search_service.py)."""
    tags = extractors.text_extractor({"kind": "tags"}, vocab=["ball", "red", "tree"])
    np.testing.assert_array_equal(tags.query(["red", "a ball"]), [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(PipelineError, match=r"none of the query's words is a tag .* \(query 2\)"):
        tags.query(["red", "nothing known", "tree"])
    words = extractors.text_extractor({"kind": "bow"}, vocab=["ball", "tree"])
    with pytest.raises(PipelineError, match=r"bag-of-words vocabulary \(query 3\)"):
        words.query(["ball", "tree", "zebra"])


def test_bag_of_words_vocabulary_from_the_training_rows_only():
    caps = ["A red ball and a red box", "the green tree", "a tree and a ball", "zebra zebra", "ball tree, ball!"]
    counts, words = bow.count_matrix(caps)
    assert words == ["ball", "box", "green", "red", "tree", "zebra"]  # English stop words ("a", "and", "the") removed
    train = np.array([0, 1, 2, 4])  # "zebra" is only in row 3, not a training row
    cols = bow.choose_vocabulary(counts[train], words, vocab_size=3, min_count=2)
    vocab = [words[c] for c in cols]
    assert vocab == ["ball", "tree"]  # in 3 and 3 training captions; red, green, box, zebra in fewer than 2
    enc = extractors.text_extractor({"kind": "bow"}, vocab=vocab)
    np.testing.assert_array_equal(enc.encode(caps), counts[:, cols].toarray())  # the query path = the rows
    assert enc.encode(["Ball ball TREE"]).tolist() == [[1.0, 1.0]]
    assert [words[c] for c in bow.choose_vocabulary(counts, words, 1, 1)] == ["ball"]  # ties: the earlier word
    with pytest.raises(PipelineError, match="no word is in 9 or more training captions"):
        bow.choose_vocabulary(counts, words, 10, 9)
    with pytest.raises(PipelineError, match="bag-of-words vocabulary"):
        enc.query(["zebra"])


def test_unknown_kinds_and_models_are_one_line():
    with pytest.raises(PipelineError, match="unknown image model"):
        extractors.image_extractor({"model": "lenet", "weights": "random"})
    with pytest.raises(PipelineError, match="unknown text features kind"):
        extractors.text_extractor({"kind": "nope"})


# ------------------------------------------------------------------ precision (image_features.precision)
#: bf16 autocast against fp32: relative L2 error and per-row cosine. Measured on this random-weight
#: AlexNet (8 noise images, 128 px, CPU): 4.3e-3 and >= 0.99999; the bounds leave a margin of ~5x.
BF16_REL_L2, BF16_COSINE = 2e-2, 0.999


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_alexnet_features_are_within_the_stated_tolerance_of_fp32(channels_last):
    rec = {"model": "alexnet", "weights": "random", "seed": 0, "input_size": 128}
    x = torch.randn(8, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    f32 = extractors.image_extractor(rec).encode(x)
    ex = extractors.image_extractor({**rec, "precision": "bf16"}, channels_last=channels_last)
    assert (ex.precision, ex.channels_last) == ("bf16", channels_last)
    b16 = ex.encode(x)
    assert b16.dtype == np.float32 and b16.shape == f32.shape
    assert not np.array_equal(b16, f32)  # bf16 did run
    rel = np.linalg.norm(b16 - f32) / np.linalg.norm(f32)
    cos = (b16 * f32).sum(1) / np.linalg.norm(b16, axis=1) / np.linalg.norm(f32, axis=1)
    assert rel < BF16_REL_L2 and cos.min() > BF16_COSINE, (rel, cos.min())


def test_fp32_default_is_the_contiguous_arithmetic_of_before():
    """fp32 without channels_last: the network and its rows exactly as before the setting existed."""
    rec = {"model": "alexnet", "weights": "random", "seed": 0, "input_size": 64}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ex = extractors.image_extractor(rec)
    assert (ex.precision, ex.channels_last) == ("fp32", False)
    with torch.inference_mode():
        want = ex.net(x).numpy()
    assert np.array_equal(ex.encode(x), want)
    assert "precision" not in ex.fingerprint()
    assert extractors.image_extractor({**rec, "precision": "bf16"}).fingerprint()["precision"] == "bf16"


def test_precision_settings_record_and_channels_last_default():
    s = ImageFeatures.from_dict({"model": "alexnet"}, "image_features")
    assert s.precision == "fp32" and "precision" not in s.record(0) and not s.use_channels_last()
    b = ImageFeatures.from_dict({"model": "alexnet", "precision": "bf16"}, "image_features")
    assert b.record(0)["precision"] == "bf16" and b.use_channels_last()
    assert not ImageFeatures.from_dict({"precision": "bf16", "channels_last": False}, "x").use_channels_last()
    assert ImageFeatures.from_dict({"channels_last": True}, "x").use_channels_last()
    with pytest.raises(PipelineError, match="precision"):
        ImageFeatures.from_dict({"precision": "fp16"}, "image_features")
    with pytest.raises(PipelineError, match="precision must be one of fp32, bf16"):
        extractors.image_extractor({"model": "alexnet", "weights": "random", "input_size": 64, "precision": "int8"})
