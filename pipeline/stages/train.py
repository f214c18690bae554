"""The ``train`` stage (rule ``train``): one method at one code length on a features file ->
``model.pt``, ``train_log.csv`` and ``train_loss.png``.

Any method of :data:`pipeline.methods.REGISTRY`, with its name's variants (resolved with the
settings by :func:`pipeline.stages.resolve`); a ``-tuned`` method also applies the tune
target's choice (``--tuned FILE``) before its name's own variants.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.data.splits import draw_train, validation_split
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def training_rows(features, settings: dict) -> np.ndarray:
    """The rows a run trains on: a ``-val<k>`` run's validation training pairs, ``-ntrain<n>``
    pairs drawn from the database, or the features file's training split."""
    val = settings.get("validation")
    if val is not None:
        return validation_rows(features, settings)["train"]
    if settings.get("train_size") is not None:
        return draw_train(features.database, int(settings["train_size"]), int(settings["seed"]))
    return features.train


def validation_rows(features, settings: dict) -> dict[str, np.ndarray]:
    """The validation protocol of a ``-val<k>`` run, carved from the database alone (the real
    queries are never read): validation queries, their retrieval set, the training pairs."""
    v = settings["validation"]
    n_train = v["train_size"] if v["train_size"] is not None else len(features.train)
    return validation_split(features.database, int(v["val_queries"]), int(n_train), int(settings["seed"]),
                            int(v["fold"]), int(v["folds"]))


def run(settings: dict, features_path: Path, bits: int, out: Path, *, tuned: Path | None = None,
        log_csv: Path | None = None, plot: Path | None = None, progress: bool = True) -> None:
    """Train ``settings['method']`` at ``bits`` bits on ``features_path``; write the model (and log, plot)."""
    from pipeline.features.store import read_features
    from pipeline.io import provenance, sha256_file
    from pipeline.methods import parse_method
    from pipeline.methods.base import final_row, save_model, write_history
    from pipeline.stages.tune import load_choice

    m = parse_method(settings["method"])
    if bits < 1:
        raise PipelineError(f"code length must be >= 1, not {bits}")
    if m.tuned != (tuned is not None):
        raise PipelineError(f"method {m.name!r} needs --tuned FILE (results/{{dataset}}/tune/{m.base}.json)"
                            if m.tuned else f"--tuned applies only to a method ending in -tuned, not {m.name!r}")
    choice = load_choice(tuned, m.base, settings["dataset"]) if tuned is not None else None
    config = m.config(settings.get("settings"), tuned=choice["variants"] if choice else None)
    feats = read_features(features_path)
    rows = training_rows(feats, settings)
    model = m.cls(bits, config)
    history = model.fit(feats.image[rows], feats.text[rows], seed=m.training_seed(int(settings["seed"])),
                        device=settings["device"],
                        progress=progress)
    log.info("%s: %d bits fitted on %d pairs", m.name, bits, len(rows))
    meta = provenance(settings, stage="train", method=m.name, bits=int(bits), n_train=int(len(rows)),
                      features_sha256=sha256_file(features_path), dataset=settings["dataset"],
                      tuned=choice, final=final_row(history))
    save_model(out, model, meta)
    if log_csv is not None:
        write_history(log_csv, history)
        if plot is not None:
            from pipeline.report.figures import plot_train_log

            plot_train_log(log_csv, plot, **m.cls.plot)
