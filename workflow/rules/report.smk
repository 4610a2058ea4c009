# The paper-style HTML report over every enabled study.


rule report:
    input:
        summaries(),
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
        "{params.py} -m normrepro.report --params {params.effective}"
        " --out {output.html} --figures reports/figures > {log} 2>&1"
