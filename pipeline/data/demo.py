"""The embedded demo data set: image-text pairs generated offline, deterministically from a seed.

Real benchmarks (MIRFlickr, NUS-WIDE, MS-COCO) need downloads; the demo lets a new user run the
whole pipeline in minutes without one. Each image is a cluttered scene drawn with PIL: a solid or
gradient background, thin lines, dots and pixel noise, and 1-4 objects of *different* kinds
(the classes: ball, box, triangle, ...) at random places, sizes and colours. Class frequencies
are skewed, as in real data.

The text side is informative but noisy, like real captions and user tags:

* the caption names each object with probability ~0.7 (at least one), often by a synonym
  ("sphere", "cube", "hut"), with or without colour and size, in varied templates and word order;
  it sometimes adds phrases about things the image does not show ("near the window") and, with
  probability ~0.1, an object that is not there;
* tags are lower-case words: the named objects' class names, some colours, and noise tags
  ("nikon", "2007", ...) from a fixed vocabulary; 2-10 per pair, deduplicated.

Labels are the sorted indices of the object kinds present. Item ``i`` is drawn from its own
generator ``numpy.random.default_rng([seed, i])``, so an item does not depend on the others, and
re-running with the same arguments reproduces every file byte for byte (with the same
Pillow/libjpeg build). The output is the raw form of :mod:`pipeline.data.manifest`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data.manifest import Pair, begin_rewrite, read_manifest, write_manifest
from pipeline.errors import PipelineError
from pipeline.io import atomic_output

GENERATOR_VERSION = "demo-1"
JPEG_QUALITY = 90
_SS = 2  # supersampling factor: draw at 2x, downsample with LANCZOS (anti-aliased edges)

# Object kinds = classes (index order = label index), and their sampling weights (skewed).
CLASSES = ["ball", "box", "triangle", "star", "cross", "ring",
           "bar", "diamond", "heart", "arrow", "house", "tree"]
CLASS_WEIGHTS = np.array([0.15, 0.13, 0.11, 0.10, 0.09, 0.08,
                          0.07, 0.06, 0.06, 0.05, 0.05, 0.05])
# Number of objects per image: 1, 2, 3, 4.
N_OBJECTS_P = np.array([0.45, 0.35, 0.15, 0.05])
# Each kind's usual colour (trees are mostly green, ...), used with probability TYPICAL_COLOUR_P.
# Like real photos, where objects' colours and textures correlate with what they are, this gives
# an image feature extractor without trained weights (the demo's random AlexNet) a signal that
# relates to the labels; the rest of the time the colour is random.
CLASS_COLOUR = {"ball": "red", "box": "orange", "triangle": "lime", "star": "yellow", "cross": "white",
                "ring": "cyan", "bar": "purple", "diamond": "blue", "heart": "pink", "arrow": "black",
                "house": "teal", "tree": "green"}
TYPICAL_COLOUR_P = 0.85

# Words a caption may use for each class (first = the class name). No word is shared.
SYNONYMS: dict[str, list[str]] = {
    "ball": ["ball", "circle", "sphere", "disc"],
    "box": ["box", "square", "cube", "block"],
    "triangle": ["triangle", "pyramid", "wedge"],
    "star": ["star", "star shape"],
    "cross": ["cross", "plus sign"],
    "ring": ["ring", "donut", "hoop"],
    "bar": ["bar", "stripe", "rectangle", "plank"],
    "diamond": ["diamond", "rhombus", "lozenge"],
    "heart": ["heart", "heart shape"],
    "arrow": ["arrow", "pointer"],
    "house": ["house", "hut", "cabin", "cottage"],
    "tree": ["tree", "pine", "fir tree"],
}

# Object colours (named) and backgrounds (named, never an object colour name).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 210),
    "yellow": (240, 220, 30), "orange": (245, 140, 20), "purple": (130, 40, 170),
    "white": (245, 245, 245), "black": (15, 15, 15),
    "pink": (250, 130, 190), "cyan": (20, 210, 220), "lime": (160, 240, 40), "teal": (0, 120, 120),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128), "light grey": (200, 200, 200), "dark grey": (60, 60, 60),
    "beige": (225, 210, 175), "light blue": (170, 200, 230), "pale green": (185, 215, 175),
    "brown": (120, 85, 55), "navy": (30, 40, 90),
}
_MIN_CONTRAST = 130.0  # Euclidean RGB distance between an object colour and its background

SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
FILLER_ADJECTIVES = ["nice", "shiny", "simple", "bright", "plain", "flat", "cute", "odd"]

# Phrases about things no image shows (no class synonym occurs in them).
NOISE_PHRASES = [
    "near the window", "in the evening", "on a sunny day", "in the kitchen", "at the beach",
    "after the rain", "in the park", "on the table", "during the holidays", "next to my desk",
    "from last summer", "in the morning light", "at night", "in the garden", "on the floor",
    "at my grandparents", "before dinner", "in the living room",
]

_TEMPLATES = [
    "{o}", "a picture of {o}", "a photo of {o}", "an image showing {o}", "there is {o}",
    "here we see {o}", "close-up of {o}", "a drawing of {o}", "{o} in the picture",
    "a simple scene with {o}", "i can see {o}",
]
_TEMPLATES_BG = [
    "{o} on a {bg} background", "a picture of {o} on {bg}", "{o} against a {bg} backdrop",
    "a {bg} background with {o}", "there is {o} on a {bg} surface", "{o} painted on a {bg} wall",
]
_NEUTRAL_RELATIONS = ["and", "next to", "with", "beside", "near"]

# Flickr-like tags unrelated to the picture (Zipf-like frequencies in list order).
NOISE_TAGS = [
    "explore", "nikon", "canon", "2007", "summer", "art", "abstract", "photo", "macro",
    "blackandwhite", "2008", "light", "holiday", "flickr", "design", "winter", "bw", "family",
    "fun", "home", "kids", "toy", "pattern", "vacation", "2006", "geometry", "shapes", "night",
    "closeup", "city", "park", "beach", "spring", "retro", "bokeh", "christmas", "sony",
    "olympus", "d80", "quality",
]
_NOISE_TAG_P = 1.0 / np.arange(1, len(NOISE_TAGS) + 1) ** 0.8
_NOISE_TAG_P = _NOISE_TAG_P / _NOISE_TAG_P.sum()
TAG_VOCAB = sorted(set(CLASSES) | set(PALETTE) | set(NOISE_TAGS))


# --------------------------------------------------------------------------------------------
# Scene sampling


def _sample_scene(rng: np.random.Generator, size: int) -> dict:
    """Background, clutter parameters and 1-4 objects of distinct kinds (pixel coordinates)."""
    bg_name = str(rng.choice(list(BACKGROUNDS)))
    bg = np.array(BACKGROUNDS[bg_name], dtype=float)
    k = int(rng.choice(len(N_OBJECTS_P), p=N_OBJECTS_P)) + 1
    kinds = rng.choice(len(CLASSES), size=k, replace=False, p=CLASS_WEIGHTS)
    colours = [c for c, rgb in PALETTE.items()
               if np.linalg.norm(np.array(rgb, dtype=float) - bg) >= _MIN_CONTRAST]
    objects: list[dict] = []
    for j, kind in enumerate(kinds):
        # The first object is the photo's subject: large and near the centre, as in most photos
        # (and what lets features without trained weights see it); the others are smaller, anywhere.
        lo, hi = (0.24, 0.34) if j == 0 else (0.10, 0.18)  # half-extent / image size
        r_rel = float(rng.uniform(lo, hi))
        r = r_rel * size
        best, best_gap = None, -math.inf
        for _ in range(30):  # rejection sampling: keep objects mostly apart
            if j == 0:
                cx, cy = size / 2 + rng.uniform(-0.08, 0.08, size=2) * size
            else:
                cx, cy = rng.uniform(r, size - r, size=2)
            gap = min((math.hypot(cx - o["cx"], cy - o["cy"]) - 0.8 * (r + o["r"])
                       for o in objects), default=0.0)
            if gap > best_gap:
                best, best_gap = (float(cx), float(cy)), gap
            if gap >= 0:
                break
        typical = CLASS_COLOUR[CLASSES[int(kind)]]
        colour = typical if typical in colours and rng.random() < TYPICAL_COLOUR_P else str(rng.choice(colours))
        size_word = "small" if r_rel < (lo + hi) / 2 - 0.035 else (
            "large" if r_rel > (lo + hi) / 2 + 0.035 else None)
        objects.append({"kind": int(kind), "cx": best[0], "cy": best[1], "r": r,
                        "colour": colour, "size": size_word,
                        "angle": float(rng.uniform(-1.0, 1.0)),
                        "outline": bool(rng.random() < 0.3)})
    return {"bg": bg_name, "objects": objects}


# --------------------------------------------------------------------------------------------
# Rendering


def _jitter(rgb, rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    v = np.asarray(rgb, dtype=int) + rng.integers(-amount, amount + 1, size=3)
    return tuple(int(x) for x in np.clip(v, 0, 255))


def _pts(cx: float, cy: float, r: float, unit: list[tuple[float, float]], angle_deg: float):
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in unit]


def _star_unit() -> list[tuple[float, float]]:
    out = []
    for j in range(10):
        rad = 1.0 if j % 2 == 0 else 0.42
        t = -math.pi / 2 + j * math.pi / 5
        out.append((rad * math.cos(t), rad * math.sin(t)))
    return out


def _heart_unit() -> list[tuple[float, float]]:
    out = []
    for j in range(48):
        t = 2 * math.pi * j / 48
        x = 16 * math.sin(t) ** 3 / 17
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17
        out.append((x, y - 0.15))
    return out


_UNIT = {
    "box": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)],
    "star": _star_unit(),
    "cross": [(-0.28, -1), (0.28, -1), (0.28, -0.28), (1, -0.28), (1, 0.28), (0.28, 0.28),
              (0.28, 1), (-0.28, 1), (-0.28, 0.28), (-1, 0.28), (-1, -0.28), (-0.28, -0.28)],
    "bar": [(-1.0, -0.3), (1.0, -0.3), (1.0, 0.3), (-1.0, 0.3)],
    "diamond": [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)],
    "heart": _heart_unit(),
    "arrow": [(-1, -0.2), (0.2, -0.2), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.2), (-1, 0.2)],
    "house": [(-0.7, 1), (-0.7, -0.1), (-0.9, -0.1), (0, -1), (0.9, -0.1), (0.7, -0.1), (0.7, 1)],
    "door": [(-0.18, 0.45), (0.18, 0.45), (0.18, 1), (-0.18, 1)],
    "crown1": [(0, -1), (0.55, -0.25), (-0.55, -0.25)],
    "crown2": [(0, -0.6), (0.8, 0.5), (-0.8, 0.5)],
    "trunk": [(-0.15, 0.5), (0.15, 0.5), (0.15, 1), (-0.15, 1)],
}
# Maximum rotation (degrees) per kind: shapes keep their identity (a box never becomes a diamond).
_MAX_ANGLE = {"box": 12, "triangle": 20, "star": 36, "cross": 10, "bar": 8, "diamond": 8,
              "heart": 15, "arrow": 180, "house": 0, "tree": 0}


def _draw_object(draw: ImageDraw.ImageDraw, o: dict, rng: np.random.Generator) -> None:
    kind = CLASSES[o["kind"]]
    cx, cy, r = o["cx"] * _SS, o["cy"] * _SS, o["r"] * _SS
    fill = _jitter(PALETTE[o["colour"]], rng, 18)
    dark = tuple(int(c * 0.45) for c in fill)
    line = dark if o["outline"] else None
    width = max(1, int(r * 0.06)) if o["outline"] else 0
    ang = o["angle"] * _MAX_ANGLE.get(kind, 0)
    if kind == "ball":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=line, width=width)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, int(r * 0.32)))
    elif kind == "house":
        draw.polygon(_pts(cx, cy, r, _UNIT["house"], 0), fill=fill, outline=line, width=width)
        draw.polygon(_pts(cx, cy, r, _UNIT["door"], 0), fill=dark)
    elif kind == "tree":
        trunk = _jitter((100, 65, 30), rng, 15)
        draw.polygon(_pts(cx, cy, r, _UNIT["trunk"], 0), fill=trunk)
        draw.polygon(_pts(cx, cy, r, _UNIT["crown2"], 0), fill=fill, outline=line, width=width)
        draw.polygon(_pts(cx, cy, r, _UNIT["crown1"], 0), fill=fill, outline=line, width=width)
    else:
        draw.polygon(_pts(cx, cy, r, _UNIT[kind], ang), fill=fill, outline=line, width=width)


def _render(scene: dict, rng: np.random.Generator, size: int) -> Image.Image:
    big = size * _SS
    c0 = np.array(_jitter(BACKGROUNDS[scene["bg"]], rng, 12), dtype=float)
    if rng.random() < 0.5:  # linear gradient towards a nearby colour
        c1 = np.array(_jitter(c0, rng, 45), dtype=float)
        t = np.linspace(0.0, 1.0, big)
        t = t[:, None] if rng.random() < 0.5 else t[None, :]
        arr = c0 + (c1 - c0) * np.broadcast_to(t, (big, big))[..., None]
    else:
        arr = np.broadcast_to(c0, (big, big, 3))
    img = Image.fromarray(np.ascontiguousarray(arr.round().astype(np.uint8)), "RGB")
    draw = ImageDraw.Draw(img)

    def clutter_line():
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, big, size=4))
        colour = _jitter(c0, rng, 70) if rng.random() < 0.6 else _jitter((128, 128, 128), rng, 110)
        draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, _SS + 1)))

    for _ in range(int(rng.integers(2, 9))):
        clutter_line()
    for _ in range(int(rng.integers(5, 31))):  # small dots / noise blobs
        x, y = (float(v) for v in rng.uniform(0, big, size=2))
        rx, ry = (float(v) for v in rng.uniform(0.005, 0.018, size=2) * big)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=colour)
    for o in scene["objects"]:
        _draw_object(draw, o, rng)
    if rng.random() < 0.3:  # a line or two in front of the objects
        for _ in range(int(rng.integers(1, 3))):
            clutter_line()
    img = img.resize((size, size), Image.LANCZOS)
    sigma = float(rng.uniform(0.0, 8.0))  # pixel noise texture
    noisy = np.asarray(img, dtype=float) + rng.normal(0.0, sigma, size=(size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# Text


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _object_phrase(o: dict, rng: np.random.Generator, kind: int | None = None,
                   colour: str | None = None) -> str:
    kind = o["kind"] if kind is None else kind
    words: list[str] = []
    size = o.get("size")
    if size and rng.random() < 0.5:
        words.append(str(rng.choice(SIZE_WORDS[size])))
    if rng.random() < 0.12:
        words.append(str(rng.choice(FILLER_ADJECTIVES)))
    if rng.random() < 0.75:
        words.append(colour or o["colour"])
    syn = SYNONYMS[CLASSES[kind]]
    noun = syn[0] if rng.random() < 0.55 else str(rng.choice(syn[1:]))
    words.append(noun)
    phrase = " ".join(words)
    return ("one " + phrase) if rng.random() < 0.08 else _article(phrase)


def _relation(a: dict | None, b: dict | None, rng: np.random.Generator) -> str:
    """A connector between object a (said first) and b; spatial ones are true of the image."""
    if a is not None and b is not None and rng.random() < 0.35:
        dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]
        if abs(dx) >= abs(dy):
            return "to the left of" if dx > 0 else "to the right of"
        return "above" if dy > 0 else "below"
    return str(rng.choice(_NEUTRAL_RELATIONS))


def _make_text(scene: dict, rng: np.random.Generator) -> tuple[str, list[str]]:
    objects = scene["objects"]
    mentioned = [o for o in objects if rng.random() < 0.7]
    if not mentioned:
        mentioned = [objects[int(rng.integers(len(objects)))]]
    order = [mentioned[j] for j in rng.permutation(len(mentioned))]
    items: list[tuple[dict | None, str]] = [(o, _object_phrase(o, rng)) for o in order]
    wrong_kind = None
    if rng.random() < 0.1:  # an object that is not in the image
        absent = sorted(set(range(len(CLASSES))) - {o["kind"] for o in objects})
        wrong_kind = int(rng.choice(absent))
        phrase = _object_phrase({"kind": wrong_kind, "size": None}, rng,
                                colour=str(rng.choice(list(PALETTE))))
        items.insert(int(rng.integers(len(items) + 1)), (None, phrase))

    phrases = [p for _, p in items]
    if len(items) == 1:
        text = phrases[0]
    elif len(items) == 2 or rng.random() < 0.5:
        if len(items) == 2 and rng.random() < 0.6:
            text = f"{phrases[0]} {_relation(items[0][0], items[1][0], rng)} {phrases[1]}"
        else:
            text = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    else:
        rel = _relation(items[0][0], items[1][0], rng)
        rest = phrases[2:]
        tail = rest[0] if len(rest) == 1 else ", ".join(rest[:-1]) + " and " + rest[-1]
        text = f"{phrases[0]} {rel} {phrases[1]}, and {tail}"

    if rng.random() < 0.4:
        text = str(rng.choice(_TEMPLATES_BG)).format(o=text, bg=scene["bg"])
    else:
        text = str(rng.choice(_TEMPLATES)).format(o=text)
    n_noise = 0 if rng.random() >= 0.3 else (2 if rng.random() < 0.15 else 1)
    for phrase in rng.choice(NOISE_PHRASES, size=n_noise, replace=False):
        text = f"{phrase}, {text}" if rng.random() < 0.3 else f"{text} {phrase}"
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:] + "."

    # Tags: named classes first, then colours, then noise (truncation drops noise first).
    tags = [CLASSES[o["kind"]] for o in mentioned]
    if wrong_kind is not None and rng.random() < 0.5:
        tags.append(CLASSES[wrong_kind])
    tags += [o["colour"] for o in mentioned if rng.random() < 0.5]
    n_noise_tags = int(rng.integers(0, 6))
    tags += [str(t) for t in rng.choice(NOISE_TAGS, size=n_noise_tags, replace=False,
                                        p=_NOISE_TAG_P)]
    tags = list(dict.fromkeys(tags))
    while len(tags) < 2:
        t = str(rng.choice(NOISE_TAGS, p=_NOISE_TAG_P))
        if t not in tags:
            tags.append(t)
    tags = tags[:10]
    tags = [tags[j] for j in rng.permutation(len(tags))]
    return text, tags


# --------------------------------------------------------------------------------------------
# Public API


def generate_item(seed: int, index: int,
                  image_size: int = 96) -> tuple[Image.Image, str, list[str], list[int]]:
    """Item ``index``: (image, caption, tags, sorted labels) from ``default_rng([seed, index])``."""
    rng = np.random.default_rng([seed, index])
    scene = _sample_scene(rng, image_size)
    img = _render(scene, rng, image_size)
    caption, tags = _make_text(scene, rng)
    labels = sorted({o["kind"] for o in scene["objects"]})
    return img, caption, tags, labels


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PipelineError(f"demo data: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise PipelineError(f"demo data: {name} must be >= {minimum}, got {value}")
    return int(value)


def generate_demo(root: str | Path, n_pairs: int = 2500, seed: int = 0, image_size: int = 96,
                  progress: bool = True) -> Path:
    """Write the demo data set under ``root``; return the path of its manifest.

    ``root`` gets ``images/{id}.jpg`` (written atomically), ``meta.json`` and, last,
    ``manifest.jsonl`` -- the raw form of :mod:`pipeline.data.manifest`.

    Same arguments -> byte-identical files. An existing manifest is removed first (so the folder
    never looks complete while being rewritten) and stale images of a larger earlier run are
    deleted at the end.
    """
    n_pairs = _check_int("n_pairs", n_pairs, 1)
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, 32)
    root = Path(root)
    img_dir = begin_rewrite(root, "demo data", "images")

    from tqdm import tqdm

    width = max(6, len(str(n_pairs - 1)))
    pairs: list[Pair] = []
    written: set[str] = set()
    for i in tqdm(range(n_pairs), desc="demo images", unit="img", disable=not progress):
        img, caption, tags, labels = generate_item(seed, i, image_size)
        pid = f"{i:0{width}d}"
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
        data = buf.getvalue()
        name = f"{pid}.jpg"
        with atomic_output(img_dir / name) as tmp:
            tmp.write_bytes(data)
        written.add(name)
        pairs.append(Pair(id=pid, image=f"images/{name}", caption=caption, tags=tags,
                          labels=labels, split=None, sha256=hashlib.sha256(data).hexdigest()))

    for p in img_dir.iterdir():  # stale images of an earlier, larger run; killed temp files
        if (re.fullmatch(r"\d+\.jpg", p.name) and p.name not in written) or \
                re.fullmatch(r"\.\d+\.jpg\..*\.tmp\.jpg", p.name):
            p.unlink()

    meta = {
        "dataset": "demo",
        "provenance": {"generator": "pipeline.data.demo", "version": GENERATOR_VERSION,
                       "n_pairs": n_pairs, "seed": seed, "image_size": image_size,
                       "jpeg_quality": JPEG_QUALITY},
    }
    return write_manifest(root, CLASSES, pairs, tag_vocab=TAG_VOCAB, meta=meta)


def summarize(manifest_path: str | Path) -> dict:
    """Counts per class, mean objects (labels) per image, mean caption length (words), mean tags."""
    m = read_manifest(manifest_path)
    y = m.label_matrix()
    return {
        "n_pairs": len(m.pairs),
        "class_counts": {c: int(n) for c, n in zip(m.classes, y.sum(axis=0))},
        "mean_objects": float(y.sum(axis=1).mean()),
        "mean_caption_words": float(np.mean([len(p.caption.split()) for p in m.pairs])),
        "mean_tags": float(np.mean([len(p.tags) for p in m.pairs])),
    }


def prepare(out_dir: str | Path, settings: dict, *, progress: bool = True) -> Path:
    """The prepare stage's adapter for ``source: demo``: generate it into ``out_dir``."""
    log = logging.getLogger(__name__)
    manifest = generate_demo(out_dir, n_pairs=int(settings.get("n_pairs", 2500)), seed=int(settings["seed"]),
                             image_size=int(settings.get("image_size", 96)), progress=progress)
    log.info("demo data set: %s", summarize(manifest))
    return manifest
