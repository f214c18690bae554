# Stage 1: download (or generate) and filter a data set into its raw on-disk form.
# Code: pipeline/stages/prepare.py; one adapter per data set in pipeline/data/ (the demo: demo.py).


localrules:
    prepare,


rule prepare:
    output:
        manifest=f"{DATA}/{{dataset}}/manifest.jsonl",
    params:
        settings=settings("prepare"),
    wildcard_constraints:
        dataset=RAW_DATASETS,
    log:
        "logs/{dataset}/prepare.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/prepare.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    shell:
        "{CMIMH} prepare --config {CONFIG} --dataset {wildcards.dataset} -o {output.manifest} --log {log}"
