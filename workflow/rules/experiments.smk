# The paper's studies, each a target of its own (`snakemake --cores all mi_sweep`), writing
# results/{dataset}/studies/NAME.md (a table in the paper's layout) and NAME.png; listed under
# `studies.report` in config.yaml, their tables also go into report.md. Their runs are ordinary
# method variants (cmimh-mi<w>, cmimh-kl<w>, <method>-ntrain<n>, cmimh-samples<K>,
# cmimh_no_<term>), trained, encoded and evaluated by the usual rules through the method wildcard.
# `comparison`: every method at its defaults and tuned, mean ± std over studies.seeds repetitions.
# Which runs a study needs, its table and plot: pipeline/report/studies.py (STUDIES, one object each);
# the stage: pipeline/stages/study.py. Settings under `studies:` in config.yaml.

from pipeline.report.studies import PAPER_STUDIES


for _study in PAPER_STUDIES:

    rule:
        name:
            f"{_study}_table"
        input:
            metrics=study_inputs(_study),
        output:
            table=f"{RESULTS}/{{dataset}}/studies/{_study}.md",
            plot=f"{RESULTS}/{{dataset}}/studies/{_study}.png",
        params:
            study=_study,
            settings=settings("study"),
        wildcard_constraints:
            dataset=r"[^/]+",
        log:
            f"logs/{{dataset}}/studies/{_study}.log",
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        localrule: True
        shell:
            "{CMIMH} study {params.study} --config {CONFIG} --dataset {wildcards.dataset}"
            " --results {RESULTS}/{wildcards.dataset} --plot {output.plot} -o {output.table} --log {log}"

    rule:
        name:
            _study
        input:
            f"{RESULTS}/{DATASET}/studies/{_study}.md",
            f"{RESULTS}/{DATASET}/studies/{_study}.png",


rule studies:
    """Every study of the paper: `snakemake --cores all studies` (not tune, nor the comparison, which needs tune)."""
    input:
        [f"{RESULTS}/{DATASET}/studies/{name}.{ext}" for name in PAPER_STUDIES if name != "comparison"
         for ext in ("md", "png")],
