"""The ``encode`` stage (rule ``encode``): deterministic hash codes of the queries and the
database -> ``codes.h5`` (:mod:`pipeline.eval.codes`), and the searchable index
(:mod:`pipeline.search.index`), for any method's ``model.pt``.

A ``-val<k>`` run (a tune grid point) encodes its validation protocol instead: validation
queries and retrieval set carved from the database, so evaluation scores it like any run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(settings: dict, model_path: Path, features_path: Path, out: Path, index_dir: Path | None = None,
        manifest: Path | None = None) -> None:
    """Write ``codes.h5`` (and the index when ``index_dir`` is given; with the data set's
    ``manifest``, the index also holds each item's caption and image path, for showing hits)."""
    from pipeline.errors import PipelineError
    from pipeline.eval.codes import write_codes
    from pipeline.features.store import read_features
    from pipeline.io import provenance_json, sha256_file
    from pipeline.methods.base import load_model
    from pipeline.stages.train import validation_rows

    model, _ = load_model(model_path, settings["device"])  # a torch method resolves the device, the others ignore it
    f = read_features(features_path)
    if settings.get("validation") is not None:
        split = validation_rows(f, settings)
        q, db = split["query"], split["database"]
    else:
        q, db = f.query, f.database
    try:
        codes = {"query_image": model.encode_image(f.image[q]), "query_text": model.encode_text(f.text[q]),
                 "db_image": model.encode_image(f.image[db]), "db_text": model.encode_text(f.text[db])}
    except PipelineError as e:  # the encoder's own check of its input: say which two files disagree
        raise PipelineError(f"model {model_path} does not fit the features {features_path} (image "
                            f"{f.image.shape[1]}-d, text {f.text.shape[1]}-d; was it trained on other "
                            f"features?): {e}") from None
    bits = int(codes["db_image"].shape[1])
    real = {"query_image": model.embed_image(f.image[q]), "query_text": model.embed_text(f.text[q]),
            "db_image": model.embed_image(f.image[db]), "db_text": model.embed_text(f.text[db])}
    real = None if any(v is None for v in real.values()) else real
    # Table II diagnostics of the database codes (Corr MSE, TC estimate); evaluate copies them.
    diag = model.diagnostics(f.image[db], f.text[db], codes["db_image"], codes["db_text"])
    attrs = {"diagnostics": json.dumps(diag),
             "provenance": provenance_json(settings, stage="encode", model_sha256=sha256_file(model_path),
                                           features_sha256=sha256_file(features_path))}
    write_codes(out, **codes, query_labels=f.labels[q], db_labels=f.labels[db], bits=bits, attrs=attrs,
                query_ids=list(f.ids[q]), db_ids=list(f.ids[db]), real=real)
    log.info("codes: %d queries, %d database items, %d bits -> %s", len(q), len(db), bits, out)
    if index_dir is not None:
        from pipeline.search.index import build_index

        build_index(index_dir, model_path=model_path, features=f, db_rows=db, db_image=codes["db_image"],
                    db_text=codes["db_text"], settings=settings, manifest=manifest)
