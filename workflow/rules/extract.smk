# Stage 2: image features (AlexNet FC7 -> PCA) and text features into features.h5.
# Code: pipeline/features/ (image.py, text.py, extract.py; the file contract: store.py).


rule extract_image:
    input:
        manifest=f"{DATA}/{{dataset}}/manifest.jsonl",
    output:
        fc7=f"{RESULTS}/{{dataset}}/intermediate/fc7.h5",
    params:
        settings=settings("extract_image"),
    wildcard_constraints:
        dataset=RAW_DATASETS,
    log:
        "logs/{dataset}/extract_image.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/extract_image.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    shell:
        "{CMIMH} extract image --settings {params.settings:q} --threads {threads}"
        " --manifest {input.manifest} -o {output.fc7} 2> {log}"


rule extract_text:
    input:
        manifest=f"{DATA}/{{dataset}}/manifest.jsonl",
    output:
        text=f"{RESULTS}/{{dataset}}/intermediate/text.h5",
    params:
        settings=settings("extract_text"),
    wildcard_constraints:
        dataset=RAW_DATASETS,
    log:
        "logs/{dataset}/extract_text.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/extract_text.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    shell:
        "{CMIMH} extract text --settings {params.settings:q} --threads {threads}"
        " --manifest {input.manifest} -o {output.text} 2> {log}"


rule extract:
    input:
        manifest=f"{DATA}/{{dataset}}/manifest.jsonl",
        fc7=rules.extract_image.output.fc7,
        text=rules.extract_text.output.text,
    output:
        features=f"{RESULTS}/{{dataset}}/features.h5",
    params:
        settings=settings("extract"),
    wildcard_constraints:
        dataset=RAW_DATASETS,
    log:
        "logs/{dataset}/extract.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/extract.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
    shell:
        "{CMIMH} extract assemble --settings {params.settings:q} --manifest {input.manifest}"
        " --fc7 {input.fc7} --text {input.text} -o {output.features} 2> {log}"


rule import_features:
    input:
        src=lambda w: config["datasets"][w.dataset]["path"],
    output:
        features=f"{RESULTS}/{{dataset}}/features.h5",
    params:
        settings=settings("import_features"),
    wildcard_constraints:
        dataset=FEATURE_DATASETS,
    log:
        "logs/{dataset}/import_features.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "{CMIMH} extract import --settings {params.settings:q} --src {input.src} -o {output.features} 2> {log}"
