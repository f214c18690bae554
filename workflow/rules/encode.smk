# Stage 4: hash codes of the query and database sets, and a searchable index.
# Code: pipeline/stages/encode.py (codes.h5 contract: pipeline/eval/codes.py; index: pipeline/search/).


rule encode:
    input:
        model=rules.train.output.model,
        features=f"{RESULTS}/{{dataset}}/features.h5",
        # captions and image paths for the index (what `cmimh serve` shows); none for imported features
        manifest=lambda w: [] if is_features_dataset(w.dataset) else manifest_file(w),
    output:
        codes=f"{RESULTS}/{{dataset}}/{{method}}/{{bits}}/codes.h5",
        index=directory(f"{RESULTS}/{{dataset}}/{{method}}/{{bits}}/index"),
    params:
        settings=settings("encode"),
        manifest=lambda w, input: f" --manifest {input.manifest}" if input.manifest else "",
    log:
        "logs/{dataset}/{method}/{bits}/encode.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/encode_{{method}}_{{bits}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{CMIMH} encode --config {CONFIG} --dataset {wildcards.dataset} --threads {threads} --model {input.model}"
        " --method {wildcards.method} --features {input.features} --index {output.index}{params.manifest}"
        " -o {output.codes} --log {log}"
