# The paper's protocol studies (section IV-C), each a target: `snakemake --cores all mgah_protocol`
# (udcmh_protocol, mgah_protocol, ldr_protocol, handcrafted_protocol, curves). Each writes
# results/{dataset}/studies/NAME.md (our runs, the paper's numbers of the methods we cannot run,
# marked reported) and NAME.png. A preset (protocols.NAME in config.yaml; pipeline/config.py
# PROTOCOL_DEFAULTS) that changes the features or the split runs every method in its own results
# tree, results/{dataset}@{protocol}/{method}/{bits}/ (data set NAME@PROTOCOL: extracted from the
# data set's manifest, trained, encoded and evaluated by the usual rules); udcmh and curves read the
# data set's own runs. Tables and plots: pipeline/report/protocols.py; the stage: pipeline/stages/protocol.py.

from pipeline.report.protocols import PROTOCOLS


def protocol_inputs(name):
    """Input function: the metrics.json of every run of protocol `name` on the data set, and the
    features.h5 of its tree (whose provenance holds the protocol's notes) when it has one."""
    from pipeline.report.protocols import protocol_metrics_files

    def inputs(w):
        s = resolve(config, w.dataset, "protocol", name)
        files = protocol_metrics_files(RESULTS, s)
        return {"metrics": files, "features": [f"{RESULTS}/{s['tree']}/features.h5"] if s["tree"] != w.dataset else []}

    return inputs


for _name, _proto in PROTOCOLS.items():

    rule:
        name:
            f"{_proto.target}_table"
        input:
            unpack(protocol_inputs(_name)),
        output:
            table=f"{RESULTS}/{{dataset}}/studies/{_proto.target}.md",
            plot=f"{RESULTS}/{{dataset}}/studies/{_proto.target}.png",
        params:
            protocol=_name,
            settings=lambda w, _n=_name: as_json(resolve(config, w.dataset, "protocol", _n)),
            features=lambda w, input: f" --features {input.features}" if input.features else "",
        wildcard_constraints:
            dataset=r"[^/@]+",
        log:
            f"logs/{{dataset}}/studies/{_proto.target}.log",
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        localrule: True
        shell:
            "{CMIMH} protocol {params.protocol} --config {CONFIG} --dataset {wildcards.dataset}"
            " --results {RESULTS}{params.features} --plot {output.plot} -o {output.table} --log {log}"

    rule:
        name:
            _proto.target
        input:
            f"{RESULTS}/{DATASET}/studies/{_proto.target}.md",
            f"{RESULTS}/{DATASET}/studies/{_proto.target}.png",


rule protocols:
    """Every protocol study of the paper: `snakemake --cores all protocols`."""
    input:
        [f"{RESULTS}/{DATASET}/studies/{p.target}.{ext}" for p in PROTOCOLS.values() for ext in ("md", "png")],
