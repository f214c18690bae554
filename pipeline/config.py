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

import yaml

from pipeline.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
RUN_CONFIG_DIR = Path(".snakemake") / "cmimh"

#: Sections a data set may override key by key (``datasets.NAME.<section>``).
OVERRIDABLE = ("method_settings", "studies", "tune")


def load_config(path: str | Path) -> dict:
    """Read a YAML config file (not yet validated)."""
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
    for key, value in config.items():
        if isinstance(value, list):
            config[key] = [yaml.safe_load(v) if isinstance(v, str) else v for v in value]
    return config


def check_structure(config: dict, check_files: bool = True) -> None:
    """Schema checks and the cross-key rules of the selected data set; one line on the first problem."""
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
    """
    name = dataset or config["dataset"]
    if name not in config.get("datasets", {}):
        raise PipelineError(f"config: unknown dataset {name!r} (known: {', '.join(sorted(config.get('datasets', {})))})")
    ds = config["datasets"][name]
    view = {k: copy.deepcopy(v) for k, v in config.items() if k != "datasets"}
    for k, v in ds.items():
        view[k] = merge(view.get(k) or {}, v) if k in OVERRIDABLE else copy.deepcopy(v)
    view["dataset"] = name
    return view


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


def as_json(obj: Any) -> str:
    """Settings as compact, key-sorted JSON: what a rule's params hold."""
    return json.dumps(obj, sort_keys=True)
