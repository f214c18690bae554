"""Image features, resumable, with explicitly resolved weights: any extractor of
:mod:`pipeline.features.extractors` (AlexNet FC7, the paper's section IV-A, by default).

Weights are never fetched implicitly: ``imagenet`` uses torchvision's ImageNet checkpoint
(from its cache, downloading only if allowed), a path loads a local checkpoint, ``random`` is
a seeded random initialisation (for the demo and tests where no weights exist). The choice and
the checkpoint's checksum are recorded with the features.

Full-size data sets (NUS-WIDE: 187k images) take hours on one GPU, so extraction is resumable:
rows go into a hidden work file ``.NAME.partial`` beside the output (see :class:`WorkFile`),
committed every ``chunk_batches`` batches with a count of complete rows and a fingerprint of
what produced them (ids, image files, weights, input size, policy); a killed job's rerun carries
on from the last complete chunk, and a rerun against different inputs starts afresh. When every
row is done the work file is renamed onto the output, so a complete-looking output is complete.

Images are read where they are: a file, or a byte range of a tar shard (a webdataset, never
unpacked: :class:`pipeline.data.manifest.ImageRef`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.data.manifest import ImageRef
from pipeline.errors import PipelineError
from pipeline.features.extractors import ImageExtractor, ResolvedWeights, alexnet, image_extractor
from pipeline.features.extractors.base import IMAGENET_MEAN, IMAGENET_STD, imagenet_transform  # noqa: F401
from pipeline.features.work import WorkFile, digest, fingerprint
from pipeline.io import write_strings

log = logging.getLogger(__name__)

FC7_DIM = alexnet.DIM
BAD_IMAGE_POLICIES = ("error", "drop")
CHANGED = "the file changed after prepare"
#: The dataset of an image features file (``image.h5``): n x dim float32 rows.
DATASET = "image"


def fc7_network(weights: str, seed: int):
    """AlexNet truncated after FC7's ReLU (4,096-d), in eval mode, and the resolved weights."""
    return alexnet.network(weights, seed)


def open_rgb(fp):
    """An image file (a path or a file object) as RGB, turned upright by its EXIF orientation (phone
    and camera photos are often stored sideways with an orientation tag); the caller closes nothing."""
    from PIL import ImageOps

    with Image.open(fp) as im:
        return to_rgb(ImageOps.exif_transpose(im))  # 16-bit and float modes scaled, not clipped


def _ref(p) -> ImageRef:
    return p if isinstance(p, ImageRef) else ImageRef(Path(p))


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB, its tones kept.

    PIL's ``convert("RGB")`` clips the integer and float grey modes to 0..255 instead of scaling
    them: a 16-bit scan (``I;16``, or ``I`` from some decoders) came out almost all white, float
    images (``F``, values in 0..1) almost all black. Those modes are scaled first: 16-bit values by
    1/257; ``I`` as 16-bit when its values fit, else its own range; ``F`` as 0..1 when they fit, else
    its range. Every other mode (L, P, CMYK, RGBA, 1, YCbCr, LA ...) converts as usual.
    """
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
            a = a / 257.0
        elif im.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        else:  # values outside the mode's usual range: stretch them over 0..255
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


class ImageFiles(Dataset):
    """Images by reference (a file, or a byte range of a tar shard); a file that cannot be read or
    decoded yields ``ok=False`` and the reason.

    Any exception of one file's decoding (PIL raises OSError, SyntaxError, ValueError,
    DecompressionBombError, struct errors ... depending on the format) marks that image bad
    rather than stopping a many-hour run; the policy decides what happens next. With
    ``sha256`` (the manifest's checksums, None where it has none), a file whose bytes no longer
    match is bad too: an image replaced after ``prepare`` by another valid one would otherwise
    give features of the wrong picture without a word.
    """

    def __init__(self, paths: Sequence, transform, sha256: Sequence[str | None] | None = None):
        self.refs = [_ref(p) for p in paths]
        self.transform = transform
        self.sha256 = list(sha256) if sha256 is not None else [None] * len(self.refs)
        if len(self.sha256) != len(self.refs):
            raise ValueError("ImageFiles: one checksum per path")

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        try:
            data = self.refs[i].read()
            x = self.transform(open_rgb(io.BytesIO(data)))
        except Exception as e:  # noqa: BLE001 - see the class docstring
            from pipeline.data.collection import clean_reason

            return None, False, clean_reason(e)
        want = self.sha256[i]
        if want and (got := hashlib.sha256(data).hexdigest()) != want:
            return None, False, (f"{CHANGED}: its sha256 {got[:12]}... is not the manifest's {want[:12]}...; "
                                 "rerun prepare")
        return x, True, ""


def _collate(batch):
    """Stack the good images (zeros in the bad rows); ``None`` when the whole batch is bad."""
    ok = [b[1] for b in batch]
    shape = next((b[0].shape for b in batch if b[1]), None)
    x = torch.stack([b[0] if b[1] else torch.zeros(shape) for b in batch]) if shape is not None else None
    return x, torch.tensor(ok, dtype=torch.bool), [b[2] for b in batch]


def _missing_files(refs: Sequence[ImageRef], ids: Sequence[str]) -> None:
    """Under ``error``, list missing files before hours of work, not at item 90,000."""
    missing = [i for i, r in enumerate(refs) if not r.exists()]
    if missing:
        i = missing[0]
        raise PipelineError(f"{len(missing)} image file(s) missing, first id {ids[i]}: {refs[i]} "
                            "(fix them or set image_features.on_bad_image: drop)")


def extract_images(extractor: ImageExtractor, paths: Sequence, ids: Sequence[str], out_h5: Path, *,
                   device: torch.device, batch_size: int = 64, num_workers: int = 0, on_bad_image: str = "error",
                   progress: bool = True, attrs: dict | None = None, chunk_batches: int = 8,
                   fingerprint_extra: dict | None = None, on_chunk: Callable[[int], None] | None = None,
                   sha256: Sequence[str | None] | None = None) -> ResolvedWeights:
    """``extractor``'s features of every image into ``out_h5`` (``image`` n x dim float32, ``ok``
    uint8, ``ids``).

    Resumable (see the module docstring): a rerun after a kill continues from the last committed
    chunk of ``chunk_batches`` batches. A missing or corrupt image stops with its id and path
    (``on_bad_image: error``; committed rows are kept, so the rerun after a fix carries on) or is
    logged and recorded as ``ok = 0`` with a zero row (``drop``): assembly drops the pair; the
    count and ids are attributes ``n_bad_images`` and ``bad_image_ids`` (JSON). ``on_chunk(rows)``
    is called after each commit (tests use it to interrupt). ``sha256``: the manifest's checksum of
    each image (None: not checked); a file whose bytes differ is a bad image. Batch size, workers and device are
    not part of the fingerprint: they change the arithmetic order at most, not what is computed.
    """
    from tqdm import tqdm

    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise PipelineError(f"on_bad_image must be 'error' or 'drop', not {on_bad_image!r}")
    refs = [_ref(p) for p in paths]
    if len(refs) != len(ids):
        raise PipelineError(f"image features: {len(refs)} image paths but {len(ids)} ids")
    if batch_size < 1 or chunk_batches < 1 or num_workers < 0:
        raise PipelineError(f"image features: batch_size ({batch_size}) and chunk_batches ({chunk_batches}) must be "
                            f">= 1, num_workers ({num_workers}) >= 0")
    n, dim = len(refs), extractor.dim
    fp = fingerprint({**extractor.fingerprint(), "n": n, "ids": digest(ids), "on_bad_image": on_bad_image,
                      **(fingerprint_extra or {})})
    layout = {DATASET: ((n, dim), "float32"), "ok": ((n,), "uint8")}
    with WorkFile(out_h5, fp, layout, n, init=lambda f: write_strings(f, "ids", ids)) as wf:
        start = wf.rows_done
        if start:
            log.info("image features: resuming %s at row %d of %d", wf.path, start, n)
        if start < n:
            if on_bad_image == "error":
                _missing_files(refs[start:], ids[start:])
            _run(extractor, refs, ids, wf, start, sha256=sha256, device=device, batch_size=batch_size,
                 num_workers=num_workers, on_bad_image=on_bad_image, chunk_batches=chunk_batches,
                 on_chunk=on_chunk, bar=tqdm(total=n, initial=start, desc=extractor.name, unit="img",
                                             disable=not progress))
        ok = wf.f["ok"][()]
        bad = [str(ids[i]) for i in np.flatnonzero(ok == 0)]
        resolved = extractor.weights
        wf.f.attrs.update({"model": extractor.name, "dim": dim, "weights": resolved.name,
                           "weights_source": resolved.source, "weights_sha256": resolved.sha256 or "",
                           "input_size": int(extractor.input_size or 0), "on_bad_image": on_bad_image,
                           "n_bad_images": len(bad), "bad_image_ids": json.dumps(bad), **(attrs or {})})
        wf.finish()
    log.info("image features (%s, %d-d): %d images, %d unreadable%s, weights=%s (%s)", extractor.name, dim, n, len(bad),
             f" (dropped: {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''})" if bad else "",
             resolved.name, resolved.source)
    return resolved


def extract_fc7(paths: Sequence, ids: Sequence[str], out_h5: Path, *, weights: str, seed: int,
                device: torch.device, input_size: int = 224, **kw) -> ResolvedWeights:
    """AlexNet FC7 of every image into ``out_h5``: :func:`extract_images` with :mod:`.extractors.alexnet`."""
    ex = image_extractor({"model": "alexnet", "weights": weights, "seed": seed, "input_size": input_size})
    return extract_images(ex, paths, ids, out_h5, device=device, **kw)


def _run(extractor: ImageExtractor, refs: Sequence[ImageRef], ids: Sequence[str], wf: WorkFile, start: int, *,
         sha256: Sequence[str | None] | None, device: torch.device, batch_size: int, num_workers: int,
         on_bad_image: str, chunk_batches: int, on_chunk: Callable[[int], None] | None, bar) -> None:
    """Rows ``start..n`` through the network into the work file, committing every ``chunk_batches``."""
    cuda = device.type == "cuda"
    extractor.to(device)
    files = ImageFiles(refs[start:], extractor.preprocess, None if sha256 is None else sha256[start:])
    loader = DataLoader(files, batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=_collate, pin_memory=cuda)
    rows, ok_ds = wf.f[DATASET], wf.f["ok"]
    n, row, batches = wf.n, start, 0
    with bar:
        for x, ok, reasons in loader:
            b = len(ok)
            bad = np.flatnonzero(~ok.numpy())
            for j in bad:
                what = "changed" if reasons[j].startswith(CHANGED) else "unreadable"
                msg = f"{what} image for id {ids[row + j]}: {refs[row + j]} ({reasons[j]})"
                if on_bad_image == "error":
                    raise PipelineError(msg)
                log.warning("%s; pair dropped", msg)
            if x is not None:
                out = extractor.encode(x)
                out[bad] = 0.0
            else:
                out = np.zeros((b, extractor.dim), np.float32)
            rows[row:row + b] = out
            ok_ds[row:row + b] = ok.numpy().astype(np.uint8)
            row += b
            batches += 1
            bar.update(b)
            if batches % chunk_batches == 0 or row == n:
                wf.commit(row)
                if on_chunk is not None:
                    on_chunk(row)
    if row != n:
        raise PipelineError(f"image features: the image loader stopped at row {row} of {n}")
