# Stage 5: the paper's protocol and metrics on a codes.h5 (any producer).
# Code: pipeline/stages/evaluate.py; components in pipeline/eval/ (hamming.py ranking, metrics.py).


def chance_file(w):
    """The chance level a run is evaluated against: one file per data set, split and code length
    (a -val<k> run's split is its validation fold), shared by every method."""
    from pipeline.stages import chance_split

    return f"{RESULTS}/{w.dataset}/chance/{chance_split(w.method)}/{w.bits}.json"


rule chance:
    """Random codes' mAP@k and paired mAP, once per split and code length (not once per method)."""
    input:
        features=f"{RESULTS}/{{dataset}}/features.h5",
    output:
        chance=f"{RESULTS}/{{dataset}}/chance/{{split}}/{{bits}}.json",
    params:
        settings=lambda w: as_json(resolve(config, w.dataset, "chance", split=w.split)),
    wildcard_constraints:
        split=r"test|val\d+",
    log:
        "logs/{dataset}/chance/{split}_{bits}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/chance_{{split}}_{{bits}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{CMIMH} chance --config {CONFIG} --dataset {wildcards.dataset} --split {wildcards.split} --threads {threads}"
        " --features {input.features} --bits {wildcards.bits} -o {output.chance} --log {log}"


rule evaluate:
    input:
        codes=rules.encode.output.codes,
        chance=chance_file,
    output:
        metrics=f"{RESULTS}/{{dataset}}/{{method}}/{{bits}}/metrics.json",
    params:
        k=lambda w: resolve(config, w.dataset, "evaluate")["eval_k"],
    log:
        "logs/{dataset}/{method}/{bits}/evaluate.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/evaluate_{{method}}_{{bits}}.tsv"
    threads: 1  # the ranking's threads (cmimh evaluate --threads); a demo run takes ~1 s, jobs run side by side
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{CMIMH} evaluate {input.codes} --k {params.k} --chance {input.chance} --threads {threads}"
        " -o {output.metrics} --log {log}"
