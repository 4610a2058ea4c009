# One job per run of the grid (or per pack of runs, runtime.pack); one aggregation per study.
# The pack helpers (pack_rule_name, inherit_train_settings, join_train_group) are in common.smk.

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
        " || {params.py} -m normrepro.record_failure --config {input.config} --out {params.out}"
        " --log {log} --exit-code $?"


# Packs (runtime.pack, src/packing.py): the unfinished runs of one cell (all but the seed equal)
# trained by one job as one fused model, each into its own run folder exactly as `train` would.
# Planned at parse time from what is unfinished (grid.plan_packs), so finished runs are never in
# a pack and a new seed trains alone or with the other new ones. A pack of one is left to `train`.
# Each pack is a rule of its own (outputs are its runs' files), named after its first run; it
# takes precedence over `train` for those files and carries the settings given for `train` on
# the command line or in a profile (--set-threads, --set-resources, --groups).
# runtime.pack: auto decides by the device the jobs run on (a cluster's: a GPU).
PACK_DEVICE = "cuda" if GPU_PER_JOB or workflow.non_local_exec else "cpu"
PACKS = grid.plan_packs(
    [r for runs in RUNS.values() for r in runs],
    RESULTS,
    grid.pack_setting(PARAMS),
    PACK_DEVICE,
)


for pack in (p for p in PACKS if len(p) > 1):
    name = pack_rule_name(pack)
    inherit_train_settings(name)

    rule:
        # src/train.py resumes every run of the pack from its checkpoint; a crash records each
        # unfinished run as `failed` with the job's log (a copy in every run folder).
        name:
            name
        input:
            [f"{RESULTS}/configs/{r['study']}/{r['run_id']}.json" for r in pack],
        output:
            [f"{RESULTS}/runs/{r['study']}/{r['run_id']}/metrics.json" for r in pack],
        log:
            [f"{RESULTS}/runs/{r['study']}/{r['run_id']}/job.log" for r in pack],
        threads: 1
        resources:
            gpu=GPU_PER_JOB,
        params:
            py=sys.executable,
            runs=" ".join(
                f"--config {RESULTS}/configs/{r['study']}/{r['run_id']}.json"
                f" --out {RESULTS}/runs/{r['study']}/{r['run_id']}"
                for r in pack
            ),
            logs=" ".join(
                f"--log {RESULTS}/runs/{r['study']}/{r['run_id']}/job.log"
                for r in pack
            ),
            device=DEVICE,
        shell:
            "OMP_NUM_THREADS={threads} {params.py} src/train.py {params.runs}"
            " --device {params.device} 2>&1 | tee {log} > /dev/null"
            " || {params.py} -m normrepro.record_failure {params.runs} {params.logs} --exit-code $?"

    workflow.ruleorder(name, "train")
    join_train_group(workflow.get_rule(name))


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
        effective=EFFECTIVE_PARAMS,
        out=lambda wc: f"{RESULTS}/summaries/{wc.study}",
    shell:
        "{params.py} -m normrepro.aggregate --params {params.effective}"
        " --study {wildcards.study} --out {params.out}"
        " --metrics {output.metrics} --curves {output.curves} > {log} 2>&1"


rule train_all:
    input:
        [m for s in STUDIES for m in run_metrics(s)],


rule aggregate_all:
    input:
        summaries(),
