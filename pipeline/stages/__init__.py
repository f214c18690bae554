"""The pipeline's stages, one module each (``prepare``, ``extract``, ``train``, ``encode``,
``evaluate``, ``report``, ``study``, ``tune``, ``search``, ``serve``), each with one entry point, ``run``;
and the one settings resolver, :func:`resolve`, that the Snakemake rules (their params) and the
``cmimh`` command (a stage run by hand with ``--config``) both use.

Imports run one way: ``cli`` -> ``stages`` -> the components (``methods``, ``data``,
``features``, ``eval``, ``report``, ``search``) -> ``config``, ``io``, ``settings``, ``torchkit``
-> ``errors`` (tests/test_layering.py checks it).
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.config import check_structure, dataset_view, load_config, normalize
from pipeline.errors import PipelineError

#: The dataset keys the prepare stage reads (its adapter's settings).
PREPARE_KEYS = ("source", "path", "n_pairs", "image_size", "images", "download_dir", "mirror", "min_tag_count",
                "n_concepts", "download_images", "missing_image", "hash_images", "images_mode", "columns", "format",
                "list_separator")
#: Your own collections: their prepare checks each image under ``image_features.on_bad_image``.
OWN_SOURCES = ("folder", "table", "webdataset")
IMPORT_KEYS = ("path", "n_query", "n_train", "import_keys", "allow_overlap")
STAGES = ("prepare", "extract_image", "extract_text", "extract", "import_features", "train", "encode",
          "evaluate", "chance", "report", "study", "tune", "protocol")


def chance_split(method: str) -> str:
    """The split a method's run is evaluated on, as the chance rule names it: ``test`` (the data
    set's queries and database), or ``val<k>`` for a ``-val<k>`` run (its validation fold)."""
    from pipeline.methods import parse_method

    fold = parse_method(method).fold
    return "test" if fold is None else f"val{fold}"


def resolve(config: dict, dataset: str | None, stage: str, method: str | None = None, *,
            split: str | None = None) -> dict:
    """The settings ``stage`` reads for ``dataset`` (and ``method``; for ``chance`` the ``split``,
    ``test`` or ``val<k>``), as plain JSON values.

    The only place settings are merged (global < data set), defaulted and validated (typed
    settings), and a method name's variants applied: what a rule's params hold is what the
    stage, run by the rule or by hand, computes with. Stages: :data:`STAGES`.
    """
    from pipeline.features.settings import LOW_LEVEL_MODELS, ImageFeatures, TextFeatures

    v = dataset_view(config, dataset)
    name = v["dataset"]
    base: dict[str, Any] = {"dataset": name, "seed": int(v.get("seed", 0))}
    where = f"config: dataset {name!r}"
    if stage == "prepare":
        out = {**base, **{k: v[k] for k in PREPARE_KEYS if k in v}}
        if v.get("source") in OWN_SOURCES:
            out["on_bad_image"] = ImageFeatures.from_dict(v.get("image_features"),
                                                          f"{where}: image_features").on_bad_image
        return out
    if stage in ("extract_image", "extract_text", "extract"):
        image = ImageFeatures.from_dict(v.get("image_features"), f"{where}: image_features").to_dict()
        text = TextFeatures.from_dict(v.get("text_features"), f"{where}: text_features").to_dict()
        if stage == "extract_image":  # pca_dim is assembly's; the shard files' names carry the shards
            out = {**base, "device": v.get("device", "auto"),
                   "image_features": {k: x for k, x in image.items() if k not in ("pca_dim", "shards")}}
            if image["model"] in LOW_LEVEL_MODELS:
                if v.get("source") != "nuswide":
                    raise PipelineError(f"{where}: image_features.model {image['model']!r} is NUS-WIDE's "
                                        f"official features: only a nuswide data set has them")
                out["low_level"] = {k: v[k] for k in ("path", "download_dir", "mirror") if k in v}
            return out
        if stage == "extract_text":
            return {**base, "device": v.get("device", "auto"), "text_features": text}
        return {**base, "n_query": v.get("n_query"), "n_train": v.get("n_train"), "image_features": image,
                "text_features": text, **({"protocol": v["protocol"]} if v.get("protocol") else {})}
    if stage == "import_features":
        return {**base, **{k: v[k] for k in IMPORT_KEYS if k in v},
                **({"protocol": v["protocol"]} if v.get("protocol") else {})}
    if stage in ("train", "encode"):
        from pipeline.methods import parse_method

        m = parse_method(method or "cmimh")
        out = {**base, "device": v.get("device", "auto"), "method": m.name}
        if m.fold is not None:
            out["validation"] = validation_settings(v, m.fold)
        if stage == "encode":
            return out
        settings = (v.get("method_settings") or {}).get(m.base)
        out["settings"] = m.config(settings).to_dict()
        out["train_size"] = m.train_size
        return out
    if stage == "evaluate":
        return {"eval_k": int(v.get("eval_k", 1000))}
    if stage == "chance":  # what the split's rows and the chance level depend on, nothing else
        import re

        split = "test" if split is None else str(split)
        m = re.fullmatch(r"val(\d+)", split)
        if split != "test" and not m:
            raise PipelineError(f"unknown split {split!r} (use test or val<k>)")
        out = {**base, "eval_k": int(v.get("eval_k", 1000)), "split": split}
        if m:
            val = validation_settings(v, int(m.group(1)))
            out["validation"] = {key: val[key] for key in ("val_queries", "folds", "fold")}
        return out
    if stage == "report":
        from pipeline.report.studies import study_settings

        return {"dataset": name, "methods": list(v["methods"]), "code_lengths": [int(b) for b in v["code_lengths"]],
                "eval_k": int(v.get("eval_k", 1000)), "studies": list(study_settings(v)["report"])}
    if stage == "study":
        from pipeline.report.studies import study_settings

        return study_settings(v)
    if stage == "tune":
        from pipeline.report.studies import tune_settings

        return tune_settings(v, config)
    if stage == "protocol":  # ``method``: the protocol's name
        from pipeline.report.protocols import protocol_settings

        if "@" in name:
            raise PipelineError(f"protocol study of {name!r}: name the data set itself ({v['base_dataset']!r})")
        return protocol_settings(config, name, method or "", v)
    raise PipelineError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")


def validation_settings(view: dict, fold: int) -> dict:
    """The validation protocol of a ``-val<k>`` run: the tune settings that carve it from the database."""
    from pipeline.report.studies import tune_settings

    t = tune_settings(view, None)
    if not 0 <= fold < t["folds"]:
        raise PipelineError(f"validation fold {fold} is not in 0..{t['folds'] - 1} (tune.folds = {t['folds']})")
    return {"val_queries": t["val_queries"], "folds": t["folds"], "fold": int(fold), "train_size": t["train_size"]}


def check_config(config: dict, check_files: bool = True) -> None:
    """Everything a run of the selected data set will read, checked before any job starts: the
    structure, every configured method (name and settings), the feature settings, the studies
    and tune settings. One line on the first problem."""
    check_structure(normalize(config), check_files=check_files)
    from pipeline.methods import REGISTRY, parse_method

    name = config["dataset"]
    view = dataset_view(config, name)
    for i, method in enumerate(view["methods"]):
        try:
            resolve(config, name, "train", parse_method(method).name)
        except PipelineError as e:
            raise PipelineError(f"config: methods[{i}]: {e}") from None
    unknown = set(view.get("method_settings") or {}) - set(REGISTRY)
    if unknown:
        raise PipelineError(f"config: method_settings: unknown method {sorted(unknown)[0]!r}")
    if view["source"] != "features":
        resolve(config, name, "extract")
    resolve(config, name, "study")
    resolve(config, name, "tune")
    from pipeline.config import PROTOCOL_DEFAULTS

    if "@" not in name:
        for proto in PROTOCOL_DEFAULTS:  # each protocol target's methods
            resolve(config, name, "protocol", proto)


def settings_from_args(a, stage: str, method: str | None = None, split: str | None = None) -> dict:
    """A stage's settings from ``--settings JSON`` (resolved already) or ``--config FILE
    [--dataset NAME]`` (by hand and from the rules: resolved here, with :func:`resolve`)."""
    from pipeline.config import REPO_ROOT

    if getattr(a, "settings", None):
        try:
            s = json.loads(a.settings)
        except json.JSONDecodeError as e:
            raise PipelineError(f"--settings is not valid JSON: {e}") from None
        if not isinstance(s, dict):
            raise PipelineError("--settings must be a JSON object")
        return s
    cfg = load_config(getattr(a, "config", None) or REPO_ROOT / "config.yaml")
    if getattr(a, "dataset", None):
        cfg["dataset"] = a.dataset
    check_structure(normalize(cfg), check_files=stage not in ("study", "tune", "report", "protocol"))
    return resolve(cfg, cfg["dataset"], stage, method, split=split)
