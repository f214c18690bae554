# Helpers shared by the rules: config validation at start, paths, resolved settings.
import json
import re
import sys
from pathlib import Path

from pipeline.config import normalize, resolve_stage, validate
from pipeline.errors import PipelineError

try:
    validate(normalize(config))
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
    """The resolved settings that `stage` reads, as JSON for `cmimh --settings` (rule params).

    With a `method` wildcard, its variant (e.g. cmimh_no_mi) is applied, so each ablation run
    has its own params and reruns only when its own settings change."""
    return lambda w: json.dumps(resolve_stage(config, w.dataset, stage, getattr(w, "method", None)),
                                sort_keys=True)


def features_path(dataset):
    return f"{RESULTS}/{dataset}/features.h5"


def run_dir(dataset, method, bits):
    return f"{RESULTS}/{dataset}/{method}/{bits}"


def metrics_files(dataset):
    return [f"{run_dir(dataset, m, b)}/metrics.json" for m in METHODS for b in BITS]


EXPERIMENTS = list(config.get("experiments", []))
ABLATION = config.get("ablation", {})
ABLATION_BITS = int(ABLATION.get("bits", 32))
ABLATION_VARIANTS = list(ABLATION.get("variants", ["cmimh", "cmimh_no_rec", "cmimh_no_mi", "cmimh_no_kl",
                                                   "cmimh_no_tc", "cmimh_no_bal"]))


def experiment_tables(dataset):
    """Tables of the studies listed in `experiments`, which report.md includes."""
    return [f"{RESULTS}/{dataset}/{name}.md" for name in EXPERIMENTS]


def all_targets():
    return [*metrics_files(DATASET), f"{RESULTS}/{DATASET}/report.md"]
