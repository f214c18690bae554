# CMIMH: unsupervised cross-modal hashing, from raw data to a report.
#   snakemake --cores all all                                   # the embedded demo
#   snakemake --cores all all --config dataset=mirflickr25k     # another data set
# Rules stay thin: each calls one `cmimh` subcommand (pipeline/cli.py).

from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/encode.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/experiments.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/protocols.smk"


rule all:
    default_target: True
    input:
        all_targets(),
