# Stage 2: image features (image_features.model: AlexNet FC7 by default -> PCA) and text features into
# features.h5. Image extraction runs as `image_features.shards` jobs (GPU, resumable) merged into
# intermediate/image.h5; text extraction is resumable too; assembly streams the image features through
# the PCA (bounded memory). Code: pipeline/stages/extract.py (one entry point per rule); components in
# pipeline/features/ (the extractors: pipeline/features/extractors/).


def image_shards(w):
    """The image shard files of a data set: `image_features.shards` contiguous row ranges (default 1)."""
    n = resolve(config, w.dataset, "extract")["image_features"]["shards"]
    return [f"{RESULTS}/{w.dataset}/intermediate/image/shard_{i}_of_{n}.h5" for i in range(n)]


def text_gpus(w):
    """A sentence encoder or CLIP runs on torch (a GPU helps); tag vectors and words do not."""
    kind = resolve(config, w.dataset, "extract_text")["text_features"]["kind"]
    return 1 if kind in ("sentence", "clip") else 0


rule extract_image_shard:
    """Image features of one shard of the images; resumable: a killed job's rerun carries on."""
    input:
        manifest=manifest_file,
    output:
        image=temp(f"{RESULTS}/{{dataset}}/intermediate/image/shard_{{shard}}_of_{{nshards}}.h5"),
    params:
        settings=settings("extract_image"),  # without pca_dim and shards: they do not change the rows
    wildcard_constraints:
        dataset=RAW_DATASETS,
        shard=r"\d+",
        nshards=r"\d+",
    log:
        "logs/{dataset}/extract_image_shard_{shard}_of_{nshards}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/extract_image_shard_{{shard}}_of_{{nshards}}.tsv"
    threads: 2  # torch intra-op threads (cmimh extract --threads): the convolutions scale with cores
    priority: EXTRACT_PRIORITY
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    shell:
        "{CMIMH} extract image --config {CONFIG} --dataset {wildcards.dataset} --threads {threads}"
        " --manifest {input.manifest} --shard {wildcards.shard} --shards {wildcards.nshards}"
        " -o {output.image} --log {log}"


rule extract_image:
    """The shards merged into one image.h5, chunk by chunk (one shard: a copy)."""
    input:
        manifest=manifest_file,
        shards=image_shards,
    output:
        image=f"{RESULTS}/{{dataset}}/intermediate/image.h5",
    params:
        # the shards' settings: a change reruns the merge, which asks for new shards (they are temp)
        settings=settings("extract_image"),
    wildcard_constraints:
        dataset=RAW_DATASETS,
    log:
        "logs/{dataset}/extract_image.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/extract_image.tsv"
    threads: 1
    priority: EXTRACT_PRIORITY
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "{CMIMH} extract merge --manifest {input.manifest} --parts {input.shards} -o {output.image} --log {log}"


rule extract_text:
    input:
        manifest=manifest_file,
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
    priority: EXTRACT_PRIORITY
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=text_gpus,
    shell:
        "{CMIMH} extract text --config {CONFIG} --dataset {wildcards.dataset} --threads {threads}"
        " --manifest {input.manifest} -o {output.text} --log {log}"


rule extract:
    input:
        manifest=manifest_file,
        # a protocol tree shares another tree's identical intermediate features (common.smk shared_tree)
        image=lambda w: f"{RESULTS}/{shared_tree(w.dataset, 'extract_image')}/intermediate/image.h5",
        text=lambda w: f"{RESULTS}/{shared_tree(w.dataset, 'extract_text')}/intermediate/text.h5",
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
    threads: 2  # the PCA's BLAS (cmimh extract assemble --threads)
    priority: EXTRACT_PRIORITY
    resources:
        mem_mb=16000,
        runtime=60,
    shell:
        "{CMIMH} extract assemble --config {CONFIG} --dataset {wildcards.dataset} --threads {threads}"
        " --manifest {input.manifest}"
        " --image {input.image} --text {input.text} -o {output.features} --log {log}"


rule import_features:
    input:
        src=lambda w: config["datasets"][base_dataset(w.dataset)]["path"],
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
