# Stage 3: train one hashing model per method and code length.
# Code: pipeline/stages/train.py; the methods: pipeline/methods/ (one file each, REGISTRY in __init__.py).


rule train:
    input:
        features=f"{RESULTS}/{{dataset}}/features.h5",
        tuned=tuned_input,  # a -tuned method: the tune target's choice (tune.smk), else nothing
    output:
        model=f"{RESULTS}/{{dataset}}/{{method}}/{{bits}}/model.pt",
        log_csv=f"{RESULTS}/{{dataset}}/{{method}}/{{bits}}/train_log.csv",
        plot=report(
            f"{RESULTS}/{{dataset}}/{{method}}/{{bits}}/train_loss.png",
            caption="../report/train_loss.rst",
            category="Training",
            subcategory="{method} {bits} bits",
        ),
    params:
        settings=settings("train"),
        tuned=tuned_option,
    log:
        "logs/{dataset}/{method}/{bits}/train.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/train_{{method}}_{{bits}}.tsv"
    # One thread: on a CPU, code lengths trained side by side beat intra-op threading for these
    # small MLPs (measured: 2 jobs x 1 thread > 1 job x 2 threads), and several jobs x several
    # threads oversubscribe the cores. Raise it per cluster with `set-threads` in a profile.
    threads: 1
    priority: train_priority  # the long trainings first (issue 16: three CMIMH runs set 87% of the time)
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=lambda w: gpus_for_method(w.method),  # torch methods only: CVH, CMFH, CCA-ITQ run on NumPy
    shell:
        "{CMIMH} train --config {CONFIG} --dataset {wildcards.dataset} --threads {threads}"
        " --features {input.features} --method {wildcards.method} --bits {wildcards.bits}{params.tuned}"
        " --log-csv {output.log_csv} --plot {output.plot} -o {output.model} --log {log}"
