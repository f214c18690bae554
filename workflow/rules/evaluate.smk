# Stage 5: the paper's protocol and metrics on a codes.h5 (any producer).
# Code: pipeline/stages/evaluate.py; components in pipeline/eval/ (hamming.py ranking, metrics.py).


rule evaluate:
    input:
        codes=rules.encode.output.codes,
    output:
        metrics=f"{RESULTS}/{{dataset}}/{{method}}/{{bits}}/metrics.json",
    params:
        k=lambda w: resolve(config, w.dataset, "evaluate")["eval_k"],
    log:
        "logs/{dataset}/{method}/{bits}/evaluate.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/evaluate_{{method}}_{{bits}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{CMIMH} evaluate {input.codes} --k {params.k} --threads {threads} -o {output.metrics} --log {log}"
