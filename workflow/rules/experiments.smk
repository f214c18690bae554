# The paper's studies, each a target of its own (`snakemake --cores 8 mi_sweep`), writing
# results/{dataset}/studies/NAME.md (a table in the paper's layout) and NAME.png; listed under
# `experiments:` in config.yaml, their tables also go into report.md. Their runs are ordinary
# method variants (cmimh-mi<w>, cmimh-kl<w>, <method>-ntrain<n>, cmimh-samples<K>,
# cmimh_no_<term>), trained, encoded and evaluated by the usual rules through the method wildcard.
# Which runs a study needs: pipeline/report/studies.py (study_runs; settings under `studies:`).

from pipeline.report.studies import STUDIES as STUDY_NAMES

# The targets (settings under `studies:` in config.yaml):
#   code_lengths  Table III per method: every method in `methods` at each of studies.code_lengths
#   mi_sweep      Figure 1: CMIMH at studies.bits, the JS-MI weight over studies.mi_weights
#   kl_sweep      Figure 3: CMIMH at studies.bits, the KL weight over studies.kl_weights
#   train_size    Table IX: studies.train_size_methods on studies.train_sizes pairs from the database
#   critic_input  Table I: the JS critic on Bernoulli probabilities vs on K binary samples
#   ablation      Table IV: each loss term switched off in turn (at ablation.bits)
#   tc_study      Table II: with and without the TC term: TC estimate, Corr MSE, mAP per code length
#   studies       all of the above


for _study in STUDY_NAMES:

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
            settings=study_params,
            k=EVAL_K,
        wildcard_constraints:
            dataset=r"[^/]+",
        log:
            f"logs/{{dataset}}/studies/{_study}.log",
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        shell:
            "{CMIMH} study {params.study} --config {CONFIG} --dataset {wildcards.dataset}"
            " --results {RESULTS}/{wildcards.dataset} --k {params.k} --plot {output.plot} -o {output.table} --log {log}"

    rule:
        name:
            _study
        input:
            f"{RESULTS}/{DATASET}/studies/{_study}.md",
            f"{RESULTS}/{DATASET}/studies/{_study}.png",


localrules:
    code_lengths_table,
    mi_sweep_table,
    kl_sweep_table,
    train_size_table,
    critic_input_table,
    ablation_table,
    tc_study_table,


rule studies:
    """Every study of the paper (not tune): `snakemake --cores 8 studies`."""
    input:
        [f"{RESULTS}/{DATASET}/studies/{name}.{ext}" for name in STUDY_NAMES for ext in ("md", "png")],
