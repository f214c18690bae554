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
                  fixed: Sequence[str | None] | None = None, n_val: int = 0) -> dict[str, np.ndarray]:
    """Return sorted int64 index arrays ``query``, ``database``, ``train`` (train within database).

    ``fixed``: per-item ``"query"``/``"database"``/None; when every item has one, that
    assignment is used and ``n_query`` is only checked against it. ``n_val`` > 0 (LDR's protocol,
    the paper's Table VII): the next ``n_val`` pairs of the permutation after the queries are a
    ``validation`` set, in neither the database nor the training set (with a fixed assignment,
    drawn from its database). With ``n_val`` = 0 the draws are exactly those without it.
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
    val = None
    if n_val:
        if not 0 < n_val < len(database):
            raise PipelineError(f"n_val={n_val} must be between 0 and the database size - 1 ({len(database) - 1})")
        if fixed is not None and len(fixed) == n and all(s in ("query", "database") for s in fixed):
            val = np.sort(np.random.default_rng([int(seed), int(n_val)]).choice(database, size=n_val, replace=False))
        else:
            val = np.sort(perm[n_query:n_query + n_val])
        database = np.setdiff1d(database, val)
    if len(database) == 0 or len(query) == 0:
        raise PipelineError(f"split leaves an empty set: {len(query)} queries, {len(database)} database")
    if not 0 < n_train <= len(database):
        raise PipelineError(f"n_train={n_train} must be between 1 and the database size {len(database)}")
    train = np.sort(rng.choice(database, size=n_train, replace=False))
    out = {"query": query.astype(np.int64), "database": database.astype(np.int64), "train": train.astype(np.int64)}
    if val is not None:
        out["validation"] = val.astype(np.int64)
    return out


def plan_split(n: int, spec: dict, shrink: float, n_fixed_query: int | None = None) -> tuple[dict, list[str]]:
    """The sizes of a protocol's split of ``n`` pairs: ``{n_query, n_val, n_train}`` and notes.

    ``spec`` (a protocol preset's ``split``): ``n_query`` a count, or a fraction of ``n`` when
    below 1 (rounded); ``n_val`` a count (default 0); ``n_train`` a count or ``"database"`` (the
    whole database: the paper's "the rest as training set and also the retrieval database").
    Sizes that do not fit shrink, each with a note: queries + validation pairs larger than
    ``shrink`` x ``n`` scale down in proportion (the demo's 2,500 pairs cannot hold LDR's 1,000 +
    1,000); ``n_train`` above the database becomes the database. ``n_fixed_query``: a data set
    whose queries are fixed (MS-COCO's val 2017) keeps them, noted.
    """
    notes: list[str] = []
    if not n >= 3:
        raise PipelineError(f"a protocol split needs at least 3 pairs, not {n}")
    q_asked = spec.get("n_query")
    if q_asked is None:
        raise PipelineError("protocol split: n_query is missing")
    q = int(round(float(q_asked) * n)) if float(q_asked) < 1 else int(q_asked)
    q = max(q, 1)
    v = int(spec.get("n_val") or 0)
    if n_fixed_query is not None:
        if q != n_fixed_query:
            notes.append(f"the data set fixes its {n_fixed_query} queries: kept instead of {q}")
        q = n_fixed_query
    elif q + v > shrink * n:
        f = shrink * n / (q + v)
        q2, v2 = max(1, int(f * q)), int(f * v)
        notes.append(f"{n} pairs cannot hold {q} queries{f' + {v} validation pairs' if v else ''} "
                     f"(at most {shrink:g} of the pairs are held out): shrunk to {q2}{f' + {v2}' if v else ''}")
        q, v = q2, v2
    db = n - q - v
    if db < 1:
        raise PipelineError(f"protocol split: {q} queries + {v} validation pairs leave no database of {n} pairs")
    t_asked = spec.get("n_train", "database")
    if t_asked == "database":
        t = db
    else:
        t = int(t_asked)
        if t > db:
            notes.append(f"n_train {t} exceeds the database ({db} pairs): trained on all of it")
            t = db
    return {"n_query": q, "n_val": v, "n_train": t}, notes


def draw_train(database: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` training rows drawn from the database with the seed (Table IX's training-set sizes:
    a ``-ntrain<n>`` method variant). The draw depends only on (database, n, seed), never on the
    queries."""
    db = np.asarray(database, dtype=np.int64)
    if not 1 <= int(n) <= len(db):
        raise PipelineError(f"train_size {n} must be between 1 and the database size {len(db)}")
    rng = np.random.default_rng([int(seed), int(n)])
    return np.sort(rng.choice(db, size=int(n), replace=False))


def validation_split(database: np.ndarray, n_val: int, n_train: int | None, seed: int,
                     fold: int = 0, folds: int = 1) -> dict[str, np.ndarray]:
    """Carve a validation protocol out of the database rows alone.

    Returns sorted row indices ``query`` (``n_val`` rows of a seeded permutation of the database:
    fold ``fold``'s slice), ``database`` (the rest of the database) and ``train`` (``n_train``
    rows drawn from that rest with the seed and fold; all of it when ``n_train`` is None or not
    smaller). The permutation depends only on (seed, n_val, folds), so every grid point sees
    the same split.
    """
    db = np.asarray(database, dtype=np.int64).ravel()
    if len(np.unique(db)) != len(db):
        raise PipelineError("validation split: the database has repeated rows")
    if folds < 1 or not 0 <= fold < folds:
        raise PipelineError(f"validation split: fold {fold} is not in 0..{folds - 1}")
    if n_val < 1 or n_val * folds > len(db) or n_val >= len(db):
        raise PipelineError(f"tune.val_queries {n_val} x folds {folds} does not fit a database of {len(db)} rows "
                            "(the rest must stay as the validation retrieval set)")
    perm = np.random.default_rng([int(seed), int(n_val), int(folds)]).permutation(db)
    query = np.sort(perm[fold * n_val:(fold + 1) * n_val])
    rest = np.setdiff1d(db, query)
    if n_train is None or int(n_train) >= len(rest):
        train = rest.copy()
    else:
        if int(n_train) < 1:
            raise PipelineError(f"tune.train_size must be >= 1, not {n_train}")
        rng = np.random.default_rng([int(seed), int(fold), int(n_train)])
        train = np.sort(rng.choice(rest, size=int(n_train), replace=False))
    return {"query": query, "database": rest, "train": train}
