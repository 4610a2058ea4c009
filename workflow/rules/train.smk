# One job per run of the grid; one aggregation per study.
# `snakemake --lint` asks for a conda env or container per rule: every rule runs the project's
# own Python (sys.executable, the .venv made from pyproject.toml), so there is none to name.


wildcard_constraints:
    study=r"[A-Za-z0-9_\-]+",
    run=r"[A-Za-z0-9_.+\-]+",


rule train:
    # src/train.py resumes from the run's last checkpoint, so a killed or retried job goes on
    # where it stopped. A crash (exception, out of memory) is recorded as a `failed` metrics.json
    # so that the study still aggregates; the next invocation reruns it (see grid.sync_run_configs).
    input:
        config=f"{RESULTS}/configs/{{study}}/{{run}}.json",
    output:
        metrics=f"{RESULTS}/runs/{{study}}/{{run}}/metrics.json",
    log:
        f"{RESULTS}/runs/{{study}}/{{run}}/job.log",
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        py=sys.executable,
        out=lambda wc: f"{RESULTS}/runs/{wc.study}/{wc.run}",
        device=DEVICE,
    shell:
        "OMP_NUM_THREADS={threads} {params.py} src/train.py --config {input.config}"
        " --out {params.out} --device {params.device} > {log} 2>&1"
        " || {params.py} src/record_failure.py --config {input.config} --out {params.out}"
        " --log {log} --exit-code $?"


rule aggregate:
    # Reads exactly the study's planned runs (the grid's list, not a glob).
    input:
        configs=lambda wc: run_configs(wc.study),
        metrics=lambda wc: run_metrics(wc.study),
    output:
        summary=f"{RESULTS}/summaries/{{study}}/summary.json",
        table=f"{RESULTS}/summaries/{{study}}/summary.csv",
        metrics=f"{RESULTS}/metrics/{{study}}.json",
        curves=f"{RESULTS}/curves/{{study}}.tsv",
    log:
        f"{RESULTS}/summaries/{{study}}/aggregate.log",
    params:
        py=sys.executable,
        scale=SCALE,
        out=lambda wc: f"{RESULTS}/summaries/{wc.study}",
    shell:
        "{params.py} src/aggregate.py --params params.yaml --config scale={params.scale}"
        " --study {wildcards.study} --out {params.out}"
        " --metrics {output.metrics} --curves {output.curves} > {log} 2>&1"


rule train_all:
    input:
        [m for s in STUDIES for m in run_metrics(s)],


rule aggregate_all:
    input:
        summaries(),
