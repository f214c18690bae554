# Stage 6: the report (the paper's Table III layout) and its plots.
# Code: pipeline/stages/report.py (tables: pipeline/report/tables.py, plots: pipeline/report/figures.py).


localrules:
    report,


rule report:
    input:
        metrics=lambda w: metrics_files(w.dataset),
        tables=lambda w: report_tables(w.dataset),
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
        settings=settings("report"),
    log:
        "logs/{dataset}/report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{CMIMH} report --config {CONFIG} --dataset {wildcards.dataset} --results {RESULTS}/{wildcards.dataset}"
        " --html {output.html} -o {output.report} --log {log}"
