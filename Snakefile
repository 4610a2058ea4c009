# normrepro: the grid of params.yaml as one DAG.
#   snakemake --cores 1 --resources gpu=1            # full grid on one GPU
#   snakemake --cores 2 --config scale=smoke          # the CPU smoke grid
# The grid itself is expanded by src/grid.py (rules/common.smk); rules only wire files.


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        REPORT,
