"""AlexNet FC7 image features (the paper's section IV-A), with explicitly resolved weights.

Weights are never fetched implicitly: ``imagenet`` uses torchvision's ImageNet checkpoint
(from its cache, downloading only if allowed), a path loads a local checkpoint, ``random`` is
a seeded random initialisation (for the demo and tests where no weights exist). The choice and
the checkpoint's checksum are recorded with the features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from pipeline.errors import PipelineError
from pipeline.io import atomic_output, sha256_file, write_strings

log = logging.getLogger(__name__)

FC7_DIM = 4096
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class ImageFiles(Dataset):
    """Images by path; a file that cannot be decoded yields ``ok=False`` instead of raising."""

    def __init__(self, paths: Sequence[Path], transform):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.paths[i]) as im:
                x = self.transform(im.convert("RGB"))
            return x, True
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            return torch.zeros(3, 1, 1), False


def _collate(batch):
    ok = [b[1] for b in batch]
    good = [b[0] for b in batch if b[1]]
    shape = next((b.shape for b in good), None)
    xs = [b[0] if b[1] else torch.zeros(shape) for b in batch] if shape is not None else []
    return (torch.stack(xs) if xs else None), torch.tensor(ok)


def extract_fc7(paths: Sequence[Path], ids: Sequence[str], out_h5: Path, *, weights: str, seed: int,
                device: torch.device, batch_size: int = 64, input_size: int = 224,
                num_workers: int = 0, on_bad_image: str = "error", progress: bool = True,
                attrs: dict | None = None) -> ResolvedWeights:
    """FC7 features of every image into ``out_h5`` (datasets ``fc7`` n x 4096 float32, ``ok`` uint8).

    A missing or corrupt image stops with its id and path (``on_bad_image: error``) or is recorded
    as ``ok = 0`` with a zero row (``drop``), so that assembly drops the whole pair.
    """
    from tqdm import tqdm

    if on_bad_image not in ("error", "drop"):
        raise PipelineError(f"on_bad_image must be 'error' or 'drop', not {on_bad_image!r}")
    net, resolved = fc7_network(weights, seed)
    net.to(device)
    loader = DataLoader(ImageFiles(paths, imagenet_transform(input_size)), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=_collate)
    n = len(paths)
    with atomic_output(out_h5) as tmp, h5py.File(tmp, "w") as f:
        fc7 = f.create_dataset("fc7", (n, FC7_DIM), dtype="float32", chunks=(min(n, 256), FC7_DIM))
        ok_all = np.zeros(n, dtype=np.uint8)
        row = 0
        with torch.inference_mode():
            for x, ok in tqdm(loader, desc="fc7", unit="batch", disable=not progress):
                b = len(ok)
                bad = np.flatnonzero(~ok.numpy())
                for j in bad:
                    msg = f"unreadable image for id {ids[row + j]}: {paths[row + j]}"
                    if on_bad_image == "error":
                        raise PipelineError(msg)
                    log.warning("%s (pair dropped)", msg)
                if x is not None:
                    out = net(x.to(device)).float().cpu().numpy()
                    out[bad] = 0.0
                else:
                    out = np.zeros((b, FC7_DIM), np.float32)
                fc7[row:row + b] = out
                ok_all[row:row + b] = ok.numpy()
                row += b
        f.create_dataset("ok", data=ok_all)
        write_strings(f, "ids", ids)
        f.attrs.update({"weights": resolved.name, "weights_source": resolved.source,
                        "weights_sha256": resolved.sha256 or "", "input_size": input_size,
                        **(attrs or {})})
    log.info("fc7: %d images, %d unreadable, weights=%s (%s)", n, int(n - ok_all.sum()),
             resolved.name, resolved.source)
    return resolved
