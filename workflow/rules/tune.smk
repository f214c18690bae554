# Hyper-parameter selection by cross-validation on the database (`snakemake --cores all tune`).
# Each grid point of `tune.grid.<method>` on each validation fold is an ordinary run named by its
# variants (cmimh-mi1-kl0.5-lr0.001-val0: trained, encoded and evaluated by the usual rules, on a
# validation protocol carved from the database; the real queries are never read); `tune_select`
# picks each method's best (mean validation mAP@k of i2t and t2i; ties: first in grid order) into
# results/{dataset}/tune/{method}.json, which a `<method>-tuned` run trains with (train.smk).
# Code: pipeline/stages/tune.py; the study: pipeline/report/studies.py (Tune). Settings under `tune:`.


rule tune_select:
    input:
        metrics=tune_inputs,
    output:
        tuned=[tune_file("{dataset}", m) for m in tuned_methods(DATASET)],
        table=f"{RESULTS}/{{dataset}}/studies/tune.md",
        plot=f"{RESULTS}/{{dataset}}/studies/tune.png",
    params:
        settings=settings("tune"),
    wildcard_constraints:
        dataset=r"[^/]+",
    log:
        "logs/{dataset}/tune/select.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    localrule: True
    shell:
        "{CMIMH} tune --config {CONFIG} --dataset {wildcards.dataset} --results {RESULTS}/{wildcards.dataset}"
        " --table {output.table} --plot {output.plot} -o {RESULTS}/{wildcards.dataset}/tune --log {log}"


rule tune:
    """Choose each tuned method's settings by cross-validation on the database."""
    input:
        [tune_file(DATASET, m) for m in tuned_methods(DATASET)],
        f"{RESULTS}/{DATASET}/studies/tune.md",
