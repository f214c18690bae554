# Stage 6: the report (the paper's Table III layout) and its plots.
# Code: pipeline/report/report.py (plots: pipeline/eval/plots.py).


localrules:
    report,


rule report:
    input:
        metrics=lambda w: metrics_files(w.dataset),
        tables=lambda w: experiment_tables(w.dataset),
    output:
        report=f"{RESULTS}/{{dataset}}/report.md",
        # the same tables as one HTML page: Snakemake's --report shows HTML, not Markdown
        html=report(
            f"{RESULTS}/{{dataset}}/report.html",
            caption="../report/results.rst",
            category="Results",
        ),
        plots=report(
            directory(f"{RESULTS}/{{dataset}}/plots"),
            patterns=["{name}.png"],
            caption="../report/curves.rst",
            category="Retrieval curves",
        ),
    params:
        bits=BITS,
        methods=METHODS,
        k=EVAL_K,
    log:
        "logs/{dataset}/report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{CMIMH} report --results {RESULTS}/{wildcards.dataset} --dataset {wildcards.dataset}"
        " --bits {params.bits} --methods {params.methods} --k {params.k} --include {input.tables}"
        " --html {output.html} -o {output.report} --log {log}"
