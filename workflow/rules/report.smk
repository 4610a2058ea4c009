# The claims ledger and the paper-style HTML report over every enabled study.

# Every seed's claim tested on the studies' runs (src/normrepro/claims.py): a DVC metric
# (dvc.yaml) and the Claims section at the top of the report.
CLAIMS = f"{RESULTS}/claims.json"


rule claims:
    # The margins are params.yaml values: after editing one, `snakemake -R claims` (DVC's
    # claims stage does that) re-evaluates the ledger without touching a run.
    input:
        summaries(),
    output:
        CLAIMS,
    log:
        f"{RESULTS}/claims.log",
    params:
        py=sys.executable,
        effective=EFFECTIVE_PARAMS,
    shell:
        # reads RESULTS/summaries (the CLI's default --results is RESULTS, as aggregate's)
        "{params.py} -m normrepro.claims --params {params.effective}"
        " --out {output} > {log} 2>&1"


rule report:
    input:
        summaries(),
        claims=CLAIMS,
    output:
        html=REPORT,
        table="reports/summary.csv",
    log:
        "reports/report.log",
    params:
        py=sys.executable,
        effective=EFFECTIVE_PARAMS,
    shell:
        # reports/figures/<study>-<k>.svg: every figure as a file (docs/ shows one)
        "{params.py} -m normrepro.report --params {params.effective} --claims {input.claims}"
        " --out {output.html} --figures reports/figures > {log} 2>&1"
