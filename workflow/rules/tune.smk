# Hyper-parameter selection by cross-validation on the database (`snakemake --cores 8 tune`).
# One job per (grid point, fold) trains CMIMH on pairs of the database and scores it on
# validation queries carved from the database (never the real queries); `tune_select` picks the
# best (mean validation mAP@k of i2t and t2i; ties: first in grid order) and writes
# results/{dataset}/tune/cmimh.json, which method `cmimh-tuned` trains with (train.smk).
# Code: pipeline/tune.py (settings under `tune:` in config.yaml).


rule tune_point:
    input:
        features=f"{RESULTS}/{{dataset}}/features.h5",
    output:
        record=f"{RESULTS}/{{dataset}}/tune/{{point}}/fold{{fold}}.json",
    params:
        settings=settings("train"),
        tune=tune_point_params,
    wildcard_constraints:
        dataset=r"[^/]+",
        point=r"[a-z]+[0-9.]+(-[a-z]+[0-9.]+)*",
        fold=r"\d+",
    log:
        "logs/{dataset}/tune/{point}_fold{fold}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/tune_{{point}}_fold{{fold}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    shell:
        "{CMIMH} tune point --config {CONFIG} --dataset {wildcards.dataset} --threads {threads}"
        " --features {input.features} --point {wildcards.point} --fold {wildcards.fold}"
        " -o {output.record} --log {log}"


rule tune_select:
    input:
        records=lambda w: tune_point_files(w.dataset),
    output:
        tuned=f"{RESULTS}/{{dataset}}/tune/cmimh.json",
        table=f"{RESULTS}/{{dataset}}/studies/tune.md",
        plot=f"{RESULTS}/{{dataset}}/studies/tune.png",
    params:
        tune=lambda w: json.dumps(tune_settings(w.dataset), sort_keys=True),
    wildcard_constraints:
        dataset=r"[^/]+",
    log:
        "logs/{dataset}/tune/select.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "{CMIMH} tune select --config {CONFIG} --dataset {wildcards.dataset} --table {output.table}"
        " --plot {output.plot} --records {input.records} -o {output.tuned} --log {log}"


localrules:
    tune_select,


rule tune:
    """Choose CMIMH's loss weights and learning rate by cross-validation on the database."""
    input:
        tune_file(DATASET),
        f"{RESULTS}/{DATASET}/studies/tune.md",
