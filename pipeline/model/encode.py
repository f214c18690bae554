"""The ``encode`` stage: deterministic hash codes of queries and database, and the search index.

Any method's ``model.pt`` (CMIMH or a baseline, :mod:`pipeline.methods`).

Codes follow the ``codes.h5`` contract (:mod:`pipeline.eval.codes`); the index folder
(:mod:`pipeline.search.index`) holds everything needed to encode a new query from raw input.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.eval.codes import write_codes
from pipeline.features.store import read_features
from pipeline.io import provenance_json, sha256_file
from pipeline.methods import code_diagnostics, load_trained

log = logging.getLogger(__name__)


def encode_stage(model_path: Path, features_path: Path, out: Path, settings: dict,
                 device: torch.device, index_dir: Path | None = None) -> None:
    """Write ``codes.h5`` (and the index when ``index_dir`` is given)."""
    model, meta = load_trained(model_path, device)
    f = read_features(features_path)
    q, db = f.query, f.database
    try:
        codes = {
            "query_image": model.encode_image(f.image[q]), "query_text": model.encode_text(f.text[q]),
            "db_image": model.encode_image(f.image[db]), "db_text": model.encode_text(f.text[db]),
        }
    except PipelineError as e:  # the encoder's own check of its input: say which two files disagree
        raise PipelineError(f"model {model_path} does not fit the features {features_path} (image "
                            f"{f.image.shape[1]}-d, text {f.text.shape[1]}-d; was it trained on other "
                            f"features?): {e}") from None
    bits = int(codes["db_image"].shape[1])
    # Table II diagnostics of the database codes (Corr MSE, TC estimate); evaluate copies them.
    diag = code_diagnostics(model, f.image[db], f.text[db], codes["db_image"], codes["db_text"])
    attrs = {"diagnostics": json.dumps(diag),
             "provenance": provenance_json(settings, stage="encode", model_sha256=sha256_file(model_path),
                                      features_sha256=sha256_file(features_path))}
    write_codes(out, **codes, query_labels=f.labels[q], db_labels=f.labels[db], bits=bits, attrs=attrs,
                query_ids=list(f.ids[q]), db_ids=list(f.ids[db]))
    log.info("codes: %d queries, %d database items, %d bits -> %s", len(q), len(db), bits, out)
    if index_dir is not None:
        from pipeline.search.index import build_index

        build_index(index_dir, model_path=model_path, features=f, db_image=codes["db_image"],
                    db_text=codes["db_text"], settings=settings)
