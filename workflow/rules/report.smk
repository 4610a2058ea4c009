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
        scale=SCALE,
    shell:
        "{params.py} src/report.py --params params.yaml --config scale={params.scale}"
        " --out {output.html} > {log} 2>&1"
