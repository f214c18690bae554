"""The paper's split protocol (section IV-A), seeded.

``n_query`` random pairs are queries, the rest the retrieval database, and ``n_train`` pairs
sampled from the database train the model. Where a data set fixes the query/database
assignment (MS-COCO: val 2017 / train 2017) it is kept and only the training subset is drawn.
The same ``(n, n_query, n_train, seed)`` always gives the same indices, on any machine.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError


def split_indices(n: int, n_query: int, n_train: int, seed: int,
                  fixed: Sequence[str | None] | None = None) -> dict[str, np.ndarray]:
    """Return sorted int64 index arrays ``query``, ``database``, ``train`` (train within database).

    ``fixed``: per-item ``"query"``/``"database"``/None; when every item has one, that
    assignment is used and ``n_query`` is only checked against it.
    """
    if n <= 0:
        raise PipelineError("cannot split an empty data set")
    rng = np.random.default_rng(seed)
    if fixed is not None and len(fixed) == n and all(s in ("query", "database") for s in fixed):
        is_q = np.array([s == "query" for s in fixed])
        query = np.flatnonzero(is_q)
        database = np.flatnonzero(~is_q)
    else:
        if not 0 < n_query < n:
            raise PipelineError(f"n_query={n_query} must be between 1 and n-1={n - 1} for {n} pairs")
        perm = rng.permutation(n)
        query = np.sort(perm[:n_query])
        database = np.sort(perm[n_query:])
    if len(database) == 0 or len(query) == 0:
        raise PipelineError(f"split leaves an empty set: {len(query)} queries, {len(database)} database")
    if not 0 < n_train <= len(database):
        raise PipelineError(f"n_train={n_train} must be between 1 and the database size {len(database)}")
    train = np.sort(rng.choice(database, size=n_train, replace=False))
    return {"query": query.astype(np.int64), "database": database.astype(np.int64),
            "train": train.astype(np.int64)}
