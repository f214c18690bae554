"""Tag vectors (``text_features.kind: tags``): a 0/1 vector over the data set's tag vocabulary
(MIRFlickr's 1,386 tags, NUS-WIDE's 1,000, or the tags of your own collection); a typed query
is the set of its words that are tags."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.features.extractors.base import TextExtractor


def tag_vectors(tags: Sequence[Sequence[str]], vocab: Sequence[str]) -> np.ndarray:
    """Binary bag-of-tags (n x |vocab|, float32); tags outside the vocabulary are ignored."""
    index = {t: j for j, t in enumerate(vocab)}
    if len(index) != len(vocab):
        raise PipelineError("tag vocabulary has duplicate entries")
    out = np.zeros((len(tags), len(vocab)), dtype=np.float32)
    for i, ts in enumerate(tags):
        cols = [index[t] for t in ts if t in index]
        out[i, cols] = 1.0
    return out


class TagVectors(TextExtractor):
    name = "tags"
    inputs = "tags"

    def __init__(self, vocab: Sequence[str] | None):
        if not vocab:
            raise PipelineError("tag vectors need the tag vocabulary, and none is stored")
        self.vocab = list(vocab)
        self.dim = len(self.vocab)

    def encode(self, batch: Sequence[Sequence[str]]) -> np.ndarray:
        return tag_vectors(batch, self.vocab)

    def query(self, texts: Sequence[str]) -> np.ndarray:
        """The words of each query that are tags of the vocabulary (lower-cased)."""
        tags = [re.findall(r"[\w-]+", t.lower()) for t in texts]
        known = set(self.vocab)
        bad = next((i for i, words in enumerate(tags) if not any(w in known for w in words)), None)
        if bad is not None:  # every query of a batch, not only the first (a service batches concurrent ones)
            raise PipelineError("none of the query's words is a tag of this data set's vocabulary"
                                + (f" (query {bad + 1})" if len(tags) > 1 else ""))
        return self.encode(tags)
