# Helpers shared by the rules: config validation at start, paths, resolved settings.
import json
import re
import sys
from pathlib import Path

from pipeline.config import normalize, resolve_stage, validate, write_run_config
from pipeline.errors import PipelineError

try:
    validate(normalize(config))
    # Every rule runs its stage as a person would by hand: `cmimh STAGE --config CONFIG --dataset D`,
    # CONFIG being this workflow's effective config (config.yaml plus --config overrides).
    CONFIG = write_run_config(config)
except PipelineError as _e:
    # One line that names the problem, then stop before any job is planned.
    print(f"cmimh: {_e}", file=sys.stderr)
    sys.exit(1)

# The `cmimh` beside this Python (the venv's), so `.venv/bin/snakemake` works without activation.
_here = Path(sys.executable).parent / "cmimh"
CMIMH = str(_here) if _here.exists() else "cmimh"

DATASET = config["dataset"]
DATA = config.get("data_dir", "data")
RESULTS = config.get("results_dir", "results")
BITS = [int(b) for b in config["code_lengths"]]
METHODS = list(config["methods"])
EVAL_K = int(config.get("eval_k", 1000))


def _names(pred):
    names = [re.escape(n) for n, d in config["datasets"].items() if pred(d)]
    return "|".join(names) if names else "(?!x)x"


# Pre-extracted features skip prepare/extraction; every other source is prepared and extracted.
FEATURE_DATASETS = _names(lambda d: d["source"] == "features")
RAW_DATASETS = _names(lambda d: d["source"] != "features")


wildcard_constraints:
    bits=r"\d+",
    method=r"[a-z][a-z0-9_.-]*",


def settings(stage):
    """The resolved settings that `stage` reads, as JSON: a rule's params, so that a job reruns
    exactly when what its stage reads changes (the stage itself resolves the same settings from
    `--config CONFIG`).

    With a `method` wildcard, its variant (e.g. cmimh_no_mi) is applied, so each ablation run
    has its own params and reruns only when its own settings change."""
    return lambda w: json.dumps(resolve_stage(config, w.dataset, stage, getattr(w, "method", None)),
                                sort_keys=True)


def gpus_for_method(method):
    """A training job's GPUs: 1 for the methods that train with torch (config.TORCH_BASES), else 0."""
    from pipeline.config import TORCH_BASES, base_method

    return 1 if base_method(method) in TORCH_BASES else 0


def features_path(dataset):
    return f"{RESULTS}/{dataset}/features.h5"


def run_dir(dataset, method, bits):
    return f"{RESULTS}/{dataset}/{method}/{bits}"


def metrics_files(dataset):
    return [f"{run_dir(dataset, m, b)}/metrics.json" for m in METHODS for b in BITS]


EXPERIMENTS = list(config.get("experiments", []))


def studies_dir(dataset):
    return f"{RESULTS}/{dataset}/studies"


def experiment_tables(dataset):
    """Tables of the studies listed in `experiments` (results/{dataset}/studies/NAME.md), which
    report.md includes; `tune` is the tune target's table."""
    return [f"{studies_dir(dataset)}/{name}.md" for name in EXPERIMENTS]


def study_settings(dataset):
    """The study settings of a data set (pipeline/report/studies.py resolve_studies)."""
    from pipeline.report.studies import resolve_studies

    return resolve_studies(config, dataset)


def study_inputs(name):
    """Input function: the metrics.json of every run study `name` needs (studies.study_runs)."""
    from pipeline.report.studies import study_metrics_files

    return lambda w: study_metrics_files(f"{RESULTS}/{w.dataset}", name, study_settings(w.dataset))


def study_params(w):
    """A study table's params: its data set's study settings as JSON."""
    return json.dumps(study_settings(w.dataset), sort_keys=True)


def tune_settings(dataset):
    """The tune settings of a data set (pipeline/tune.py resolve_tune)."""
    from pipeline.tune import resolve_tune

    return resolve_tune(config, dataset)


def tune_file(dataset):
    return f"{RESULTS}/{dataset}/tune/cmimh.json"


def tuned_input(w):
    """The train rule's extra input: the tune target's choice for a `-tuned` method, else none."""
    from pipeline.config import parse_method

    return [tune_file(w.dataset)] if parse_method(w.method)["tuned"] else []


def tuned_option(w):
    """`--tuned FILE` for a `-tuned` method (cmimh train applies the file's settings), else nothing."""
    files = tuned_input(w)
    return f" --tuned {files[0]}" if files else ""


def all_targets():
    return [*metrics_files(DATASET), f"{RESULTS}/{DATASET}/report.md"]


def tune_point_files(dataset):
    """Every (grid point, fold) validation record of a data set's grid."""
    from pipeline.tune import grid_points, point_name

    t = tune_settings(dataset)
    return [f"{RESULTS}/{dataset}/tune/{point_name(p)}/fold{f}.json"
            for p in grid_points(t["grid"]) for f in range(int(t["folds"]))]


def tune_point_params(w):
    """A point job's tune settings with the grid cut to its point: other points' changes do not rerun it."""
    from pipeline.tune import tune_for_point

    return json.dumps(tune_for_point(tune_settings(w.dataset), w.point), sort_keys=True)
