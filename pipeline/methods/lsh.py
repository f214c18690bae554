"""Random-projection LSH across modalities: the floor a learned method must beat, and the
example of adding a method (this file and one line in :data:`pipeline.methods.REGISTRY`).

Sign random projections (Charikar, "Similarity Estimation Techniques from Rounding Algorithms",
STOC 2002): b = 1[(v - mean_v) W_v >= 0] with W_v a seeded Gaussian matrix per view. The views
live in different spaces, so cross-modal codes agree only by chance: LSH is a sanity baseline
(random but consistent codes, unlike the chance level's fresh random codes per item), and the
uni-modal tasks (I->I, T->T) measure how much the raw features alone retrieve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.methods.linear import LinearHash
from pipeline.settings import Settings


@dataclass(frozen=True)
class Config(Settings):
    """LSH has no settings: the seed draws the projections."""


class LSH(LinearHash):
    """Sign random projections of each view, centred on the training means."""

    name = "lsh"
    Config = Config
    plot = {"x": "epoch", "columns": ()}  # nothing is optimised

    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0, device: Any = "cpu",
            progress: bool = False) -> list[dict]:
        """Draw W_x, W_y ~ N(0, 1) with the seed; centre on the training means. History: none."""
        x, y = self._pair(x, y, seed)
        rng = np.random.default_rng(int(seed))
        self.mean_x_, self.mean_y_ = x.mean(axis=0), y.mean(axis=0)
        self.w_x_ = rng.standard_normal((x.shape[1], self.bits))
        self.w_y_ = rng.standard_normal((y.shape[1], self.bits))
        return []
