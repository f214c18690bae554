# Stage 1: download (or generate) and filter a data set into its raw on-disk form.
# Code: pipeline/stages/prepare.py; one adapter per data set in pipeline/data/ (the demo: demo.py).


localrules:
    prepare,


def prepare_inputs(w):
    """A table of your own is the prepare job's input (an edited table reruns it); a folder or tar
    shards are not files Snakemake can date: after adding images, `snakemake --forcerun prepare`."""
    ds = config["datasets"][w.dataset]
    return [ds["path"]] if ds.get("source") == "table" else []


rule prepare:
    input:
        prepare_inputs,
    output:
        manifest=f"{DATA}/{{dataset}}/manifest.jsonl",
    params:
        settings=settings("prepare"),
    wildcard_constraints:
        dataset=PREPARED_DATASETS,
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
