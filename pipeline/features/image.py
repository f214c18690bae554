"""AlexNet FC7 image features (the paper's section IV-A), resumable, with explicitly resolved weights.

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
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from pipeline.errors import PipelineError
from pipeline.features.work import WorkFile, digest, fingerprint
from pipeline.io import sha256_file, write_strings

log = logging.getLogger(__name__)

FC7_DIM = 4096
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BAD_IMAGE_POLICIES = ("error", "drop")
CHANGED = "the file changed after prepare"


@dataclass
class ResolvedWeights:
    """Which weights produced the features: recorded in the HDF5 attributes."""

    name: str          # "imagenet", "random" or "checkpoint"
    source: str        # torchvision weights enum, checkpoint path, or "seed=N"
    sha256: str | None


def fc7_network(weights: str, seed: int) -> tuple[nn.Module, ResolvedWeights]:
    """AlexNet truncated after FC7's ReLU (4,096-d), in eval mode, with the weights resolved."""
    if weights == "random":
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        model = torchvision.models.alexnet(weights=None)
        torch.random.set_rng_state(gen_state)
        resolved = ResolvedWeights("random", f"seed={seed}", None)
    elif weights == "imagenet":
        enum = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
        try:
            model = torchvision.models.alexnet(weights=enum)
        except Exception as e:  # network or cache failure: say where the file must go
            hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
            raise PipelineError(
                f"ImageNet AlexNet weights unavailable ({type(e).__name__}); place {Path(enum.url).name} "
                f"at {hub} or set image_features.weights to a checkpoint path") from None
        ckpt = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        resolved = ResolvedWeights("imagenet", str(enum), sha256_file(ckpt) if ckpt.is_file() else None)
    else:
        path = Path(weights)
        if not path.is_file():
            raise PipelineError(f"image_features.weights: no such checkpoint {path} "
                                "(use 'imagenet', 'random' or a file path)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            model = torchvision.models.alexnet(weights=None)
            model.load_state_dict(state)
        except Exception as e:
            raise PipelineError(f"cannot load AlexNet checkpoint {path}: {type(e).__name__}: {e}".split("\n")[0]) from None
        resolved = ResolvedWeights("checkpoint", str(path.resolve()), sha256_file(path))
    head = list(model.classifier.children())[:6]  # Dropout, FC6, ReLU, Dropout, FC7, ReLU
    net = nn.Sequential(model.features, model.avgpool, nn.Flatten(1), *head).eval()
    return net, resolved


def imagenet_transform(input_size: int = 224) -> transforms.Compose:
    """torchvision's ImageNet evaluation preprocessing (resize 256/224 of the crop, centre crop)."""
    return transforms.Compose([
        transforms.Resize(int(round(input_size * 256 / 224))),
        transforms.CenterCrop(input_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


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
    """Images by path; a file that cannot be read or decoded yields ``ok=False`` and the reason.

    Any exception of one file's decoding (PIL raises OSError, SyntaxError, ValueError,
    DecompressionBombError, struct errors ... depending on the format) marks that image bad
    rather than stopping a many-hour run; the policy decides what happens next. With
    ``sha256`` (the manifest's checksums, None where it has none), a file whose bytes no longer
    match is bad too: an image replaced after ``prepare`` by another valid one would otherwise
    give features of the wrong picture without a word.
    """

    def __init__(self, paths: Sequence[Path], transform, sha256: Sequence[str | None] | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.sha256 = list(sha256) if sha256 is not None else [None] * len(self.paths)
        if len(self.sha256) != len(self.paths):
            raise ValueError("ImageFiles: one checksum per path")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            data = Path(self.paths[i]).read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                x = self.transform(to_rgb(im))
        except Exception as e:  # noqa: BLE001 - see the class docstring
            return None, False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
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


def _missing_files(paths: Sequence[Path], ids: Sequence[str]) -> None:
    """Under ``error``, list missing files before hours of work, not at item 90,000."""
    missing = [i for i, p in enumerate(paths) if not Path(p).is_file()]
    if missing:
        i = missing[0]
        raise PipelineError(f"{len(missing)} image file(s) missing, first id {ids[i]}: {paths[i]} "
                            "(fix them or set image_features.on_bad_image: drop)")


def extract_fc7(paths: Sequence[Path], ids: Sequence[str], out_h5: Path, *, weights: str, seed: int,
                device: torch.device, batch_size: int = 64, input_size: int = 224,
                num_workers: int = 0, on_bad_image: str = "error", progress: bool = True,
                attrs: dict | None = None, chunk_batches: int = 8, fingerprint_extra: dict | None = None,
                on_chunk: Callable[[int], None] | None = None,
                sha256: Sequence[str | None] | None = None) -> ResolvedWeights:
    """FC7 features of every image into ``out_h5`` (``fc7`` n x 4096 float32, ``ok`` uint8, ``ids``).

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
    if len(paths) != len(ids):
        raise PipelineError(f"fc7: {len(paths)} image paths but {len(ids)} ids")
    if batch_size < 1 or chunk_batches < 1 or num_workers < 0:
        raise PipelineError(f"fc7: batch_size ({batch_size}) and chunk_batches ({chunk_batches}) must be >= 1, "
                            f"num_workers ({num_workers}) >= 0")
    n = len(paths)
    net, resolved = fc7_network(weights, seed)
    fp = fingerprint({"features": "alexnet-fc7-relu", "n": n, "ids": digest(ids),
                      "weights": [resolved.name, resolved.source, resolved.sha256],
                      "input_size": int(input_size), "on_bad_image": on_bad_image, **(fingerprint_extra or {})})
    layout = {"fc7": ((n, FC7_DIM), "float32"), "ok": ((n,), "uint8")}
    with WorkFile(out_h5, fp, layout, n, init=lambda f: write_strings(f, "ids", ids)) as wf:
        start = wf.rows_done
        if start:
            log.info("fc7: resuming %s at row %d of %d", wf.path, start, n)
        if start < n:
            if on_bad_image == "error":
                _missing_files(paths[start:], ids[start:])
            _run_fc7(net, paths, ids, wf, start, sha256=sha256, device=device, batch_size=batch_size, input_size=input_size,
                     num_workers=num_workers, on_bad_image=on_bad_image, chunk_batches=chunk_batches,
                     on_chunk=on_chunk, bar=tqdm(total=n, initial=start, desc="fc7", unit="img",
                                                 disable=not progress))
        ok = wf.f["ok"][()]
        bad = [str(ids[i]) for i in np.flatnonzero(ok == 0)]
        wf.f.attrs.update({"weights": resolved.name, "weights_source": resolved.source,
                           "weights_sha256": resolved.sha256 or "", "input_size": int(input_size),
                           "on_bad_image": on_bad_image, "n_bad_images": len(bad),
                           "bad_image_ids": json.dumps(bad), **(attrs or {})})
        wf.finish()
    log.info("fc7: %d images, %d unreadable%s, weights=%s (%s)", n, len(bad),
             f" (dropped: {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''})" if bad else "",
             resolved.name, resolved.source)
    return resolved


def _run_fc7(net: nn.Module, paths: Sequence[Path], ids: Sequence[str], wf: WorkFile, start: int, *,
             sha256: Sequence[str | None] | None, device: torch.device, batch_size: int, input_size: int, num_workers: int, on_bad_image: str,
             chunk_batches: int, on_chunk: Callable[[int], None] | None, bar) -> None:
    """Rows ``start..n`` through the network into the work file, committing every ``chunk_batches``."""
    cuda = device.type == "cuda"
    net.to(device)
    files = ImageFiles(paths[start:], imagenet_transform(input_size), None if sha256 is None else sha256[start:])
    loader = DataLoader(files, batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=_collate, pin_memory=cuda)
    fc7, ok_ds = wf.f["fc7"], wf.f["ok"]
    n, row, batches = wf.n, start, 0
    with bar, torch.inference_mode():
        for x, ok, reasons in loader:
            b = len(ok)
            bad = np.flatnonzero(~ok.numpy())
            for j in bad:
                what = "changed" if reasons[j].startswith(CHANGED) else "unreadable"
                msg = f"{what} image for id {ids[row + j]}: {paths[row + j]} ({reasons[j]})"
                if on_bad_image == "error":
                    raise PipelineError(msg)
                log.warning("%s; pair dropped", msg)
            if x is not None:
                out = net(x.to(device, non_blocking=cuda)).float().cpu().numpy()
                out[bad] = 0.0
            else:
                out = np.zeros((b, FC7_DIM), np.float32)
            fc7[row:row + b] = out
            ok_ds[row:row + b] = ok.numpy().astype(np.uint8)
            row += b
            batches += 1
            bar.update(b)
            if batches % chunk_batches == 0 or row == n:
                wf.commit(row)
                if on_chunk is not None:
                    on_chunk(row)
    if row != n:
        raise PipelineError(f"fc7: the image loader stopped at row {row} of {n}")
