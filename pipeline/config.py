"""The config file: reading it, checking its structure, and each data set's view of it.

``config.yaml`` is checked against ``workflow/schemas/config.schema.yaml`` for its structure
(which keys exist where, and the study and tune grids); the values of each method's and each
feature extractor's settings are checked by their typed settings (:mod:`pipeline.settings`).
What a stage reads is resolved by the one resolver, :func:`pipeline.stages.resolve`, from the
data set's view that :func:`dataset_view` builds here: global keys, overridden per data set.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
RUN_CONFIG_DIR = Path(".snakemake") / "cmimh"

#: Sections a data set may override key by key (``datasets.NAME.<section>``).
OVERRIDABLE = ("method_settings", "studies", "tune")


def load_config(path: str | Path) -> dict:
    """Read a YAML config file (not yet validated)."""
    import yaml  # here, not at import: light stages (evaluate) import this module but read no YAML

    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"config file {path} is a directory, not a YAML file")
    if not path.is_file():
        raise PipelineError(f"config file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_bytes().decode("utf-8"))
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
    import yaml

    for key, value in config.items():
        if isinstance(value, list):
            config[key] = [yaml.safe_load(v) if isinstance(v, str) else v for v in value]
    return config


def check_structure(config: dict, check_files: bool = True) -> None:
    """Schema checks and the cross-key rules of the selected data set; one line on the first problem."""
    import jsonschema
    import yaml

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
    name, _, proto = config["dataset"].partition("@")
    if name not in config["datasets"]:
        raise PipelineError(f"config: unknown dataset {name!r} (known: {', '.join(sorted(config['datasets']))})")
    if proto:
        protocol_preset(config, proto)
    for pname in config.get("protocols") or {}:
        if pname != "shrink":
            protocol_preset(config, pname)
    ds = config["datasets"][name]
    if ds["source"] == "features":
        if "path" not in ds:
            raise PipelineError(f"config: dataset {name!r}: source 'features' needs path: FILE")
        if check_files and not Path(ds["path"]).is_file():
            raise PipelineError(f"config: dataset {name!r}: features file not found: {ds['path']}")
    else:
        if ds["source"] in ("folder", "table", "webdataset"):
            if "path" not in ds:
                raise PipelineError(f"config: dataset {name!r}: source {ds['source']!r} needs path: "
                                    + {"folder": "FOLDER", "table": "TABLE_FILE",
                                       "webdataset": "SHARDS ({00000..00099}.tar)"}[ds["source"]])
            if check_files and ds["source"] != "webdataset" and not Path(ds["path"]).exists():
                raise PipelineError(f"config: dataset {name!r}: {ds['source']} not found: {ds['path']}")
        for key in ("n_query", "n_train"):
            if key not in ds:
                raise PipelineError(f"config: dataset {name!r}: missing {key}")
    if ds["source"] == "demo" and ds.get("n_query", 0) + ds.get("n_train", 0) > ds.get("n_pairs", 2500):
        raise PipelineError(f"config: dataset {name!r}: n_query + n_train exceeds n_pairs")


def merge(base: dict, over: dict | None) -> dict:
    """``over`` merged into a copy of ``base``, mappings key by key (lists and scalars replaced)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def dataset_view(config: dict, dataset: str | None = None) -> dict:
    """One data set's view of the config: the global keys with that data set's keys on top.

    The data set's own keys (``source``, ``n_query``, ``image_features``, ...) come up to the top
    level; :data:`OVERRIDABLE` sections merge key by key (``datasets.NAME.method_settings.cmimh.lr``
    overrides that one setting). An unknown data set is one line.

    ``NAME@PROTOCOL`` is data set NAME under a protocol preset (:func:`protocol_preset`): its
    features and split replaced by the preset's, so that its runs live in their own results tree
    (``results/NAME@PROTOCOL/``) and never overwrite NAME's; ``protocol`` records the preset and
    ``base_dataset`` the data set (whose prepared manifest it shares).
    """
    name = dataset or config["dataset"]
    base, _, proto = name.partition("@")
    if base not in config.get("datasets", {}):
        raise PipelineError(f"config: unknown dataset {base!r} (known: {', '.join(sorted(config.get('datasets', {})))})")
    ds = config["datasets"][base]
    view = {k: copy.deepcopy(v) for k, v in config.items() if k != "datasets"}
    for k, v in ds.items():
        view[k] = merge(view.get(k) or {}, v) if k in OVERRIDABLE else copy.deepcopy(v)
    view["dataset"] = name
    view["base_dataset"] = base
    if proto:
        p = protocol_preset(config, proto, ds.get("source"))
        if not p["tree"]:
            raise PipelineError(f"config: protocol {proto!r} changes neither features nor split: its runs are "
                                f"{base!r}'s own (use dataset {base!r})")
        if ds.get("source") == "features" and (p["image_features"] or p["text_features"]):
            # an imported features file has its features already: only the split can change
            p["notes"] = p["notes"] + ["the data set is a features file: its own features are kept"]
        for key in ("image_features", "text_features"):
            if p[key]:
                view[key] = merge(view.get(key) or {}, p[key])
        view["protocol"] = {"name": proto, "split": p["split"], "shrink": p["shrink"], "notes": p["notes"]}
    return view


#: The paper's protocol presets (section IV-C, Tables V-VIII and Figures 4-5), each overridable
#: under ``protocols.NAME`` in config.yaml. ``image_features`` / ``text_features`` are merged onto
#: the data set's own, ``split`` replaces its split (``n_query``: a count, or a fraction of the
#: pairs when below 1; ``n_val``: held-out validation pairs, in neither the database nor the
#: training set; ``n_train``: a count or ``database``, the whole database), ``sources`` adds
#: per-source overrides (NUS-WIDE's official low-level features exist only for NUS-WIDE),
#: ``methods`` (null: every method of :data:`pipeline.methods.REGISTRY`) and ``bits`` are the runs.
#: A preset that changes neither features nor split runs in the data set's own results tree.
PROTOCOL_DEFAULTS: dict[str, dict] = {
    "udcmh": {"bits": [16, 32, 64]},
    "mgah": {"bits": [16, 32, 64], "image_features": {"model": "vgg19"},
             "text_features": {"kind": "bow", "vocab_size": 1000, "min_count": 1, "stop_words": "none"},
             "split": {"n_query": 0.05, "n_train": "database"},
             "sources": {"nuswide": {"split": {"n_query": 0.01}}}},
    "ldr": {"bits": [16, 32, 64, 128], "image_features": {"model": "vgg19"},
            "split": {"n_query": 1000, "n_val": 1000, "n_train": "database"}},
    "handcrafted": {"bits": [16, 32, 64], "text_features": {"kind": "bow", "vocab_size": 1000},
                    "split": {"n_query": 2000, "n_train": 20000},
                    "sources": {"nuswide": {"image_features": {"model": "nuswide_bow_sift", "pca_dim": 500, "shards": 1},
                                            "text_features": {"kind": "tags"}}}},
    "curves": {"bits": [32]},
}
#: Held-out pairs (queries + validation) are at most this fraction of the pairs; larger asked
#: sizes (the demo's 2,500 pairs) shrink in proportion, noted in the provenance and the study.
PROTOCOL_SHRINK = 0.2


def protocol_preset(config: dict, name: str, source: str | None = None) -> dict:
    """Protocol ``name``'s preset for a data set of ``source``: the defaults < ``protocols.NAME``
    < its ``sources.SOURCE``; with ``tree`` (whether it needs a results tree of its own),
    ``methods`` (None: every method) and ``notes``. An unknown protocol is one line."""
    user = (config.get("protocols") or {})
    known = list(PROTOCOL_DEFAULTS)
    if name not in known:
        raise PipelineError(f"config: unknown protocol {name!r} (known: {', '.join(known)})")
    p = merge(PROTOCOL_DEFAULTS.get(name, {}), user.get(name))
    over = (p.pop("sources", None) or {}).get(source) or {}
    p = merge(p, over)
    out = {"name": name, "bits": [int(b) for b in p.get("bits", [32])], "methods": p.get("methods"),
           "image_features": p.get("image_features") or {}, "text_features": p.get("text_features") or {},
           "split": p.get("split") or None, "shrink": float(user.get("shrink", PROTOCOL_SHRINK)), "notes": []}
    out["tree"] = bool(out["image_features"] or out["text_features"] or out["split"])
    return out


def protocol_dataset(config: dict, dataset: str, protocol: str) -> str:
    """The data set name a protocol's runs use: ``dataset@protocol``, or ``dataset`` itself when
    the preset changes neither features nor split (its runs are the data set's own)."""
    source = (config.get("datasets", {}).get(dataset) or {}).get("source")
    return f"{dataset}@{protocol}" if protocol_preset(config, protocol, source)["tree"] else dataset


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
    import yaml

    from pipeline.io import write_text

    text = yaml.safe_dump(json.loads(json.dumps(config, sort_keys=True, default=str)), sort_keys=True)
    path = Path(folder) / f"config-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
    return str(path)


def as_json(obj: Any) -> str:
    """Settings as compact, key-sorted JSON: what a rule's params hold."""
    return json.dumps(obj, sort_keys=True)
