# Helpers shared by the rules: the config checked at start, paths, and each rule's settings
# from the one resolver (pipeline.stages.resolve), which the stages use too.
import sys
from pathlib import Path

from pipeline.config import as_json, write_run_config
from pipeline.errors import PipelineError
from pipeline.stages import check_config, resolve

try:
    check_config(config)
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


def _names(pred, protocols=True):
    """A regex of the data sets whose entry passes ``pred``; with ``protocols``, each also as
    NAME@PROTOCOL (its runs under a protocol preset, results/NAME@PROTOCOL/: protocols.smk)."""
    import re

    from pipeline.config import PROTOCOL_DEFAULTS

    names = [re.escape(n) for n, d in config["datasets"].items() if pred(d)]
    if not names:
        return "(?!x)x"
    alt = "(?:" + "|".join(names) + ")"
    return alt + ("(?:@(?:" + "|".join(PROTOCOL_DEFAULTS) + "))?" if protocols else "")


# Pre-extracted features skip prepare/extraction; every other source is prepared and extracted.
FEATURE_DATASETS = _names(lambda d: d["source"] == "features")
RAW_DATASETS = _names(lambda d: d["source"] != "features")
# prepare runs once per data set: its protocol variants share its manifest
PREPARED_DATASETS = _names(lambda d: d["source"] != "features", protocols=False)


def base_dataset(name):
    """The data set of NAME or NAME@PROTOCOL."""
    return name.partition("@")[0]


def manifest_file(w):
    """The prepared manifest of a data set; a protocol variant shares its data set's (one download)."""
    return f"{DATA}/{base_dataset(w.dataset)}/manifest.jsonl"


def shared_tree(dataset, stage):
    """The results tree whose intermediate file of `stage` (extract_image: image.h5, extract_text:
    text.h5) serves `dataset`: the first of the data set and its protocol trees (in
    PROTOCOL_DEFAULTS order) whose settings for that stage equal `dataset`'s, so identical features
    are extracted once (mgah's and ldr's VGG-19 features; ldr's texts are the data set's own)."""
    from pipeline.config import PROTOCOL_DEFAULTS, protocol_dataset

    base = base_dataset(dataset)

    def key(name):
        return {k: v for k, v in resolve(config, name, stage).items() if k != "dataset"}

    mine = key(dataset)
    trees = [base] + [protocol_dataset(config, base, p) for p in PROTOCOL_DEFAULTS]
    for cand in dict.fromkeys(trees):
        if cand == dataset:
            return dataset
        try:
            if key(cand) == mine:
                return cand
        except PipelineError:  # a preset this data set cannot take (nuswide_bow_sift off NUS-WIDE)
            continue
    return dataset


def is_features_dataset(name):
    return config["datasets"][base_dataset(name)]["source"] == "features"


wildcard_constraints:
    bits=r"\d+",
    method=r"[a-z][a-z0-9_.-]*",


def settings(stage):
    """The settings `stage` reads (pipeline.stages.resolve), as JSON: a rule's params, so that a
    job reruns exactly when what its stage reads changes. With a `method` wildcard, its variants
    (cmimh_no_mi, cmimh-kl2, ...) are applied, so each run has its own params."""
    return lambda w: as_json(resolve(config, w.dataset, stage, getattr(w, "method", None)))


def run_dir(dataset, method, bits):
    return f"{RESULTS}/{dataset}/{method}/{bits}"


def metrics_files(dataset):
    return [f"{run_dir(dataset, m, b)}/metrics.json" for m in METHODS for b in BITS]


def gpus_for_method(method):
    """A training job's GPUs: 1 for a method that trains with torch (its class's uses_torch), else 0."""
    from pipeline.methods import parse_method

    return 1 if parse_method(method).cls.uses_torch else 0


def train_priority(w):
    """The train job's Snakemake priority: its method's rough training time (Hasher.train_seconds)
    plus a little per bit, so the long trainings (CMIMH) start first
    and the seconds-long linear methods fill the cores around them instead of delaying them."""
    from pipeline.methods import parse_method

    m = parse_method(w.method)
    return int(m.cls.train_seconds) + int(w.bits) // 16


#: Extraction gates every later job: ahead of anything else that is ready (another data set's trainings).
EXTRACT_PRIORITY = 1000


def tune_file(dataset, method):
    return f"{RESULTS}/{dataset}/tune/{method}.json"


def tuned_input(w):
    """The train rule's extra input: the tune target's choice for a `-tuned` method, else none."""
    from pipeline.methods import parse_method

    m = parse_method(w.method)
    return [tune_file(w.dataset, m.base)] if m.tuned else []


def tuned_option(w):
    """`--tuned FILE` for a `-tuned` method (cmimh train applies the file's choice), else nothing."""
    files = tuned_input(w)
    return f" --tuned {files[0]}" if files else ""


def study_inputs(name):
    """Input function: the metrics.json of every run study `name` needs (its Study.runs)."""
    from pipeline.report.studies import study_metrics_files

    return lambda w: study_metrics_files(f"{RESULTS}/{w.dataset}", name, resolve(config, w.dataset, "study"))


def report_tables(dataset):
    """The study tables report.md includes (studies.report), each made by its study's rule."""
    return [f"{RESULTS}/{dataset}/studies/{name}.md" for name in resolve(config, dataset, "report")["studies"]]


def tune_inputs(w):
    """Every validation run of the tune study (each grid point on each fold, Tune.runs)."""
    from pipeline.report.studies import study_metrics_files

    return study_metrics_files(f"{RESULTS}/{w.dataset}", "tune", resolve(config, w.dataset, "tune"))


def tuned_methods(dataset):
    return list(resolve(config, dataset, "tune")["grid"])


def all_targets():
    return [*metrics_files(DATASET), f"{RESULTS}/{DATASET}/report.md"]
