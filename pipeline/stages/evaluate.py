"""The ``evaluate`` stage (rule ``evaluate``): any ``codes.h5`` -> ``metrics.json``.

Any producer's codes can be evaluated (the contract is :mod:`pipeline.eval.codes`): with labels,
every metric of :func:`pipeline.eval.metrics.evaluate_all` for the four tasks, the chance level
and the labels' coverage; with or without labels, the paired metrics on the held-out queries
(:mod:`pipeline.eval.paired`: R@1/5/10, median rank, mAP of the own pair), the only ones for a
collection without labels; and the producer's diagnostics. The JSON records the source file's checksum and the
code version, so a number can be traced back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


CHANCE_FORMAT = "cmimh-chance/1"


def labels_sha256(query_labels, db_labels) -> str:
    """The checksum of a split's labels (shapes and 0/1 values as uint8): what a chance level
    depends on besides the code length, k and the seeds, so evaluate can tell that a chance file
    was computed for the same queries and database as its codes."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for lab in (query_labels, db_labels):
        a = np.ascontiguousarray(np.asarray(lab).astype(np.uint8, copy=False))
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def chance_levels(codes, k: int, n_threads: int = 1) -> dict:
    """The chance level of codes like ``codes`` (their bits, queries, database and labels):
    random codes' mAP@k per task (with labels) and paired mAP, seeded; it reads nothing else."""
    from pipeline.eval.metrics import chance_level
    from pipeline.eval.paired import paired_chance

    return {**(chance_level(codes, k, n_threads=n_threads) if codes.labelled else {}), **paired_chance(codes)}


def _chance_key(codes, k: int, dataset: str | None) -> dict:
    """What a chance level is a function of (checked between a chance file and the codes)."""
    from pipeline.eval.metrics import CHANCE_SEED
    from pipeline.eval.paired import PAIRED_CHANCE_SEED

    return {"dataset": dataset, "bits": int(codes.bits), "k": int(k), "n_query": int(codes.n_query),
            "n_db": int(codes.n_db), "labels_sha256": labels_sha256(codes.query_labels, codes.db_labels),
            "seed": int(CHANCE_SEED), "paired_seed": int(PAIRED_CHANCE_SEED)}


def chance_record(codes, k: int, dataset: str | None, split: str = "test", n_threads: int = 1) -> dict:
    """The chance file's record of codes like ``codes`` (what :func:`read_chance` checks and reads):
    format, split, the key of :func:`_chance_key` and the chance levels."""
    return {"format": CHANCE_FORMAT, "split": split, "labelled": codes.labelled, **_chance_key(codes, k, dataset),
            "chance": chance_levels(codes, k, n_threads)}


def run_chance(settings: dict, features_path: str | os.PathLike, bits: int, out_json: str | os.PathLike, *,
               n_threads: int = 1) -> dict:
    """The chance level of one data set, split and code length -> ``out_json`` (rule ``chance``).

    Why a stage of its own: the chance level is the same for every method at one code length and
    split, and at MS-COCO size it takes 5-7 s; computed here once per length, every method's
    evaluate reads it (``--chance``) instead of recomputing it. ``settings``: ``resolve(config,
    dataset, "chance", split=...)``: the split is ``test`` (the data set's queries and database)
    or ``val<k>`` (a ``-val<k>`` run's validation queries and retrieval set).
    """
    import numpy as np

    from pipeline.errors import PipelineError
    from pipeline.eval.codes import Codes
    from pipeline.features.store import read_features
    from pipeline.io import provenance, sha256_file, write_json
    from pipeline.stages.train import validation_rows

    if not 1 <= int(bits) <= 1024:
        raise PipelineError(f"code length (--bits) must be between 1 and 1024, not {bits}")
    k = int(settings["eval_k"])
    if k < 1:
        raise PipelineError(f"eval_k must be >= 1, not {k}")
    t0 = time.perf_counter()
    f = read_features(features_path)
    if settings.get("validation") is not None:
        split = validation_rows(f, {**settings, "validation": {"train_size": None, **settings["validation"]}})
        q, db = split["query"], split["database"]
    else:
        q, db = f.query, f.database
    empty = np.zeros((0, 0), np.uint8)
    # chance_levels reads the sizes, bits and labels only: zero-width codes of the right row counts
    codes = Codes(query_image=np.zeros((len(q), 0), np.uint8), query_text=empty, db_image=np.zeros((len(db), 0), np.uint8),
                  db_text=empty, query_labels=f.labels[q].astype(np.uint8, copy=False),
                  db_labels=f.labels[db].astype(np.uint8, copy=False), bits=int(bits))
    rec = {**chance_record(codes, k, settings["dataset"], settings.get("split", "test"), n_threads),
           "seconds": round(time.perf_counter() - t0, 3),
           "provenance": provenance(settings, stage="chance", features=str(features_path),
                                    features_sha256=sha256_file(features_path))}
    write_json(out_json, rec)
    log.info("chance: %s %s split, %d bits, mAP@%d -> %s (%.1fs)", settings["dataset"], rec["split"], bits, k,
             out_json, rec["seconds"])
    return rec


def read_chance(path: str | os.PathLike, codes, k: int) -> dict:
    """The chance level recorded in ``path`` (rule ``chance``), after checking that it was computed
    for these codes' data set, code length, k, split (the labels' checksum and sizes) and seeds;
    one line naming the first difference otherwise."""
    from pipeline.errors import PipelineError

    path = Path(path)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"missing chance file: {path}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise PipelineError(f"chance file {path}: not readable JSON ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(rec, dict) or rec.get("format") != CHANCE_FORMAT or not isinstance(rec.get("chance"), dict):
        raise PipelineError(f"chance file {path}: not a {CHANCE_FORMAT} file (made by `cmimh chance`)")
    want = _chance_key(codes, k, _codes_dataset(codes))
    for key, value in want.items():
        if key == "dataset" and value is None:  # codes without a recorded data set (another producer's)
            continue
        if rec.get(key) != value:
            what = "split (the labels of queries and database)" if key == "labels_sha256" else key
            raise PipelineError(f"chance file {path} does not fit the codes: its {what} is {rec.get(key)!r}, "
                                f"the codes' {value!r} (rerun `cmimh chance` for them)")
    return rec["chance"]


def _codes_dataset(codes) -> str | None:
    """The data set recorded in the codes' provenance (the encode stage's settings), else None."""
    prov = codes.attrs.get("provenance")
    try:
        prov = json.loads(prov) if isinstance(prov, (bytes, str)) else prov
    except ValueError:
        return None
    cfg = prov.get("config") if isinstance(prov, dict) else None
    return cfg.get("dataset") if isinstance(cfg, dict) else None


def run(codes_h5: str | os.PathLike, out_json: str | os.PathLike, k: int = 1000, *,
        chance: bool = True, n_threads: int = 1, chance_file: str | os.PathLike | None = None) -> dict:
    """Evaluate ``codes_h5`` and write ``out_json`` atomically; return the dict.

    Layout: with labels, see :func:`pipeline.eval.metrics.evaluate_all`, plus ``labels``
    (:func:`~pipeline.eval.metrics.label_summary`); always ``labelled``, ``pair_map`` and
    ``paired`` (:func:`pipeline.eval.paired.paired_metrics`), ``chance`` (random codes' mAP@k and
    paired mAP, when ``chance``: read from ``chance_file`` when given, checked to fit, else
    computed), ``diagnostics`` (the producer's), ``seconds`` and ``provenance``.
    """
    from pipeline.errors import PipelineError
    from pipeline.eval.codes import read_codes
    from pipeline.eval.metrics import continuous_metrics, evaluate_all, label_summary
    from pipeline.eval.paired import paired_metrics
    from pipeline.io import provenance, sha256_file, write_json

    if k < 1:
        raise PipelineError(f"--k must be >= 1, not {k}")
    codes_h5 = Path(codes_h5)
    t0 = time.perf_counter()
    codes = read_codes(codes_h5)
    labelled = codes.labelled
    if labelled:
        metrics = evaluate_all(codes, k=k, n_threads=n_threads)
        metrics["labels"] = lab = label_summary(codes)
        if lab["query_without_relevant"] or lab["db_unlabelled"]:
            log.warning("evaluate: %d of %d queries have no relevant database item (%d carry no label) and %d of %d "
                        "database items carry no label: those queries score AP 0 under any method",
                        lab["query_without_relevant"], lab["n_query"], lab["query_unlabelled"], lab["db_unlabelled"],
                        lab["n_db"])
        cont = continuous_metrics(codes, k)
        if cont is not None:  # the method's embeddings before binarisation, ranked by cosine
            metrics["continuous"] = cont
    else:  # no labels: the paired metrics are the evaluation
        metrics = {"n_query": codes.n_query, "n_db": codes.n_db, "bits": int(codes.bits)}
    metrics["labelled"] = labelled
    metrics.update(paired_metrics(codes))
    t1 = time.perf_counter()
    if chance:
        metrics["chance"] = (read_chance(chance_file, codes, k) if chance_file is not None
                             else chance_levels(codes, k, n_threads))
    t2 = time.perf_counter()
    src_prov = codes.attrs.get("provenance")
    if isinstance(src_prov, (bytes, str)):
        try:
            src_prov = json.loads(src_prov)
        except ValueError:
            pass
    diag = codes.attrs.get("diagnostics")  # written by the producer (CMIMH: Table II diagnostics)
    if isinstance(diag, (bytes, str)):
        try:
            metrics["diagnostics"] = json.loads(diag)
        except ValueError:
            log.warning("ignoring unparsable diagnostics attribute in %s", codes_h5)
    metrics["seconds"] = {"metrics": round(t1 - t0, 3), "chance": round(t2 - t1, 3)}
    metrics["provenance"] = provenance(
        None, stage="evaluate", codes=str(codes_h5), codes_sha256=sha256_file(codes_h5), k=int(k),
        relevance=("shares at least one label; paired: " if labelled else "paired: ") + metrics["paired"]["protocol"],
        tie_break="ascending database index", codes_provenance=src_prov,
        chance_file=None if chance_file is None or not chance else str(chance_file),
        chance_sha256=None if chance_file is None or not chance else sha256_file(chance_file),
    )
    write_json(out_json, metrics)
    pm = metrics["paired"]
    log.info("evaluate: %s -> %s (%spaired R@1 i2t %.4f t2i %.4f, %.1fs)", codes_h5, out_json,
             f"mAP@{k} i2t {metrics[f'map@{k}']['i2t']:.4f} t2i {metrics[f'map@{k}']['t2i']:.4f}; " if labelled else "",
             pm["i2t"]["r@1"], pm["t2i"]["r@1"], t2 - t0)
    return metrics
