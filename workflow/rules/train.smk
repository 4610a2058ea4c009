# One job per chunk of a cell's seeds (grid.jobs); one aggregation per study.

# `snakemake --lint` asks for a conda env or container per rule: every rule runs the project's
# own Python (sys.executable, the .venv made from pyproject.toml), so there is none to name.


wildcard_constraints:
    study=r"[A-Za-z0-9_\-]+",
    job=r"[A-Za-z0-9_.+\-]+",
    attempt=r"\d+",


rule train:
    # src/train.py trains the job's unfinished runs (finished ones are skipped; a pack of
    # several is one fused model) and resumes each from its last checkpoint, so a killed or
    # retried job goes on where it stopped. record_failure then records the runs a crash left
    # unfinished as `failed` (the study still aggregates; the next invocation retries them: the
    # grid asks for the job's next attempt) and writes the job's record, which Snakemake waits
    # for. The job's runs are fixed by the grid; its record says how it ended.
    output:
        record=f"{RESULTS}/jobs/{GRID}/{{study}}/{{job}}.{{attempt}}.json",
    log:
        f"{RESULTS}/jobs/{GRID}/{{study}}/{{job}}.{{attempt}}.log",
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        py=sys.executable,
        runs=train_args,
        configs=lambda wc: job_runs(wc, "configs"),
        outs=lambda wc: job_runs(wc, "outs"),
        device=DEVICE,
    shell:
        "code=0; OMP_NUM_THREADS={threads} {params.py} src/train.py {params.runs}"
        " --device {params.device} > {log} 2>&1 || code=$?;"
        " {params.py} -m normrepro.record_failure {params.runs} --log {log} --exit-code $code"
        " --job-record {output.record}"


rule aggregate:
    # Reads exactly the study's planned runs (the grid's list, not a glob), once every job of
    # the study has ended.
    input:
        lambda wc: study_records(wc.study),
    output:
        summary=f"{RESULTS}/summaries/{GRID}/{{study}}/summary.json",
        table=f"{RESULTS}/summaries/{GRID}/{{study}}/summary.csv",
        metrics=f"{RESULTS}/metrics/{GRID}/{{study}}.json",
        curves=f"{RESULTS}/curves/{GRID}/{{study}}.tsv",
    log:
        f"{RESULTS}/summaries/{GRID}/{{study}}/aggregate.log",
    params:
        py=sys.executable,
        effective=EFFECTIVE_PARAMS,
        out=lambda wc: f"{RESULTS}/summaries/{GRID}/{wc.study}",
    shell:
        "{params.py} -m normrepro.aggregate --params {params.effective}"
        " --study {wildcards.study} --out {params.out}"
        " --metrics {output.metrics} --curves {output.curves} > {log} 2>&1"


rule train_all:
    input:
        [job_record(job) for job in JOBS.values()],


rule aggregate_all:
    input:
        summaries(),
