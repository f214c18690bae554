"""A bag of words built from the captions (``text_features.kind: bow``), for collections without
tags: a 0/1 vector over the ``vocab_size`` words found in the most training captions (at least
``min_count`` of them), English stop words removed (``stop_words: none`` keeps them).

Tokenising is scikit-learn's ``CountVectorizer`` (lower case, words of two or more letters or
digits, Unicode-aware), the same analyser at extraction and for a typed query. Extraction counts
every caption over the whole vocabulary (:func:`count_matrix`, sparse); assembly, which draws the
split, chooses the vocabulary from the training rows alone (:func:`choose_vocabulary`: document
frequency, ties by word order), so no query caption shapes the features.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.features.extractors.base import TextExtractor

STOP_WORDS = ("english", "none")


def vectorizer(stop_words: str, vocabulary: Sequence[str] | None = None):
    from sklearn.feature_extraction.text import CountVectorizer

    if stop_words not in STOP_WORDS:
        raise PipelineError(f"text_features.stop_words must be english or none, not {stop_words!r}")
    return CountVectorizer(binary=True, lowercase=True, stop_words=None if stop_words == "none" else stop_words,
                           vocabulary=None if vocabulary is None else list(vocabulary), dtype=np.uint8)


def count_matrix(captions: Sequence[str], stop_words: str = "english"):
    """(n x V sparse 0/1 CSR matrix, the V words in sorted order) over every caption's words."""
    v = vectorizer(stop_words)
    try:
        x = v.fit_transform(list(captions))
    except ValueError:  # no caption has a word
        raise PipelineError("bag of words: no caption has a word of two or more letters") from None
    return x.tocsr(), [str(w) for w in v.get_feature_names_out()]


def choose_vocabulary(train_counts, words: Sequence[str], vocab_size: int, min_count: int) -> np.ndarray:
    """Columns of the words in at least ``min_count`` training captions, the ``vocab_size`` most
    frequent (ties: the earlier word), in word order; one line when none qualifies."""
    df = np.asarray((train_counts > 0).sum(axis=0)).ravel()
    ok = np.flatnonzero(df >= int(min_count))
    if len(ok) == 0:
        raise PipelineError(f"bag of words: no word is in {min_count} or more training captions "
                            "(lower text_features.min_count)")
    order = ok[np.argsort(-df[ok], kind="stable")][: int(vocab_size)]
    return np.sort(order)


class BagOfWords(TextExtractor):
    name = "bow"
    inputs = "captions"

    def __init__(self, vocab: Sequence[str] | None, stop_words: str = "english"):
        if not vocab:
            raise PipelineError("a bag of words needs its vocabulary, and none is stored")
        self.vocab = list(vocab)
        self.dim = len(self.vocab)
        self.stop_words = stop_words
        self._v = vectorizer(stop_words, self.vocab)

    def encode(self, batch: Sequence[str]) -> np.ndarray:
        return self._v.transform(list(batch)).toarray().astype(np.float32)

    def query(self, texts: Sequence[str]) -> np.ndarray:
        x = self.encode(texts)
        empty = np.flatnonzero(~np.asarray(x).any(axis=1))
        if len(empty):  # every query of a batch, not only the first (a service batches concurrent ones)
            raise PipelineError("none of the query's words is in this data set's bag-of-words vocabulary"
                                + (f" (query {empty[0] + 1})" if len(x) > 1 else ""))
        return x
