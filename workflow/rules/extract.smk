# Stage 2: image features (AlexNet FC7 -> PCA) and text features into features.h5.
# FC7 runs as `image_features.shards` jobs (GPU, resumable) merged into intermediate/fc7.h5; text
# extraction is resumable too; assembly streams FC7 through the PCA (bounded memory).
# Code: pipeline/features/ (image.py, text.py, extract.py; the file contract: store.py).


def fc7_settings(w):
    """`extract_image` settings less `pca_dim` and `shards`: assembly alone reads the first, the
    shard files' names carry the second; so changing either does not redo the FC7 extraction."""
    s = resolve_stage(config, w.dataset, "extract_image")
    s["image_features"] = {k: v for k, v in s["image_features"].items() if k not in ("pca_dim", "shards")}
    return json.dumps(s, sort_keys=True)


def fc7_shards(w):
    """The FC7 shard files of a data set: `image_features.shards` contiguous row ranges (default 1)."""
    n = int(resolve_stage(config, w.dataset, "extract_image")["image_features"].get("shards", 1))
    return [f"{RESULTS}/{w.dataset}/intermediate/fc7/shard_{i}_of_{n}.h5" for i in range(n)]


rule extract_image_shard:
    """AlexNet FC7 of one shard of the images; resumable: a killed job's rerun carries on."""
    input:
        manifest=f"{DATA}/{{dataset}}/manifest.jsonl",
    output:
        fc7=temp(f"{RESULTS}/{{dataset}}/intermediate/fc7/shard_{{shard}}_of_{{nshards}}.h5"),
    params:
        settings=fc7_settings,
    wildcard_constraints:
        dataset=RAW_DATASETS,
        shard=r"\d+",
        nshards=r"\d+",
    log:
        "logs/{dataset}/extract_image_shard_{shard}_of_{nshards}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/extract_image_shard_{{shard}}_of_{{nshards}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    shell:
        "{CMIMH} extract image --config {CONFIG} --dataset {wildcards.dataset} --threads {threads}"
        " --manifest {input.manifest} --shard {wildcards.shard} --shards {wildcards.nshards}"
        " -o {output.fc7} --log {log}"


rule extract_image:
    """The shards merged into one fc7.h5, chunk by chunk (one shard: a copy)."""
    input:
        manifest=f"{DATA}/{{dataset}}/manifest.jsonl",
        shards=fc7_shards,
    output:
        fc7=f"{RESULTS}/{{dataset}}/intermediate/fc7.h5",
    params:
        # the shards' settings: a change reruns the merge, which asks for new shards (they are temp)
        settings=fc7_settings,
    wildcard_constraints:
        dataset=RAW_DATASETS,
    log:
        "logs/{dataset}/extract_image.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/extract_image.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "{CMIMH} extract merge --manifest {input.manifest} --parts {input.shards} -o {output.fc7} --log {log}"


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
        gpu=lambda w: 1 if resolve_stage(config, w.dataset, "extract_text")["text_features"]["kind"] == "sentence" else 0,
    shell:
        "{CMIMH} extract text --config {CONFIG} --dataset {wildcards.dataset} --threads {threads}"
        " --manifest {input.manifest} -o {output.text} --log {log}"


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
        "{CMIMH} extract assemble --config {CONFIG} --dataset {wildcards.dataset} --manifest {input.manifest}"
        " --fc7 {input.fc7} --text {input.text} -o {output.features} --log {log}"


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
        "{CMIMH} import --config {CONFIG} --dataset {wildcards.dataset} {input.src} -o {output.features} --log {log}"
