# Studies of the paper, each a target of its own; listed under `experiments:` in config.yaml,
# their tables also go into report.md. Code: pipeline/report/report.py (tables), the runs reuse
# the train/encode/evaluate rules through the method wildcard (cmimh_no_<term> variants).


rule ablation_table:
    input:
        metrics=lambda w: [f"{run_dir(w.dataset, m, ABLATION_BITS)}/metrics.json" for m in ABLATION_VARIANTS],
    output:
        table=f"{RESULTS}/{{dataset}}/ablation.md",
    params:
        bits=ABLATION_BITS,
        variants=ABLATION_VARIANTS,
        k=EVAL_K,
    log:
        "logs/{dataset}/ablation_table.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "{CMIMH} report --ablation --results {RESULTS}/{wildcards.dataset} --dataset {wildcards.dataset}"
        " --bits {params.bits} --methods {params.variants} --k {params.k} -o {output.table} 2> {log}"


rule ablation:
    """Table IV: train with each loss term switched off in turn (`snakemake --cores 8 ablation`)."""
    input:
        f"{RESULTS}/{DATASET}/ablation.md",
