# normrepro: the grid of params.yaml as one DAG.
#   snakemake --cores 1 --resources gpu=1            # full grid on one GPU
#   snakemake --cores 2 --config scale=smoke          # the CPU smoke grid
# The grid itself is planned by normrepro.grid (rules/common.smk); rules only wire files.

from normrepro import preflight

# A syntax error in params.yaml as FILE:LINE:COLUMN (Snakemake's own message names neither).
preflight.refuse_bad_yaml("params.yaml")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    # The report, and every job's record: a job with an unfinished run is asked for its next
    # attempt's record, which is missing, so Snakemake runs it (and what depends on it) with or
    # without its metadata and whatever the rerun triggers (grid.record_attempt).
    default_target: True
    input:
        REPORT if ONLY is None else summaries(),  # only=<study>: the report is left as it is
        [job_record(job) for job in JOBS.values()],


# A crashed run is recorded `failed` and the rest of the grid goes on (record_failure); at the
# end the command exits 1 if any run it needed failed, its last lines naming each run's log.
onsuccess:
    from normrepro import exit_status

    planned = [cfg for study in STUDIES for cfg in RUNS[study]]
    exit_status.end_of_grid(workflow, planned, RESULTS, ended_ok=True)


onerror:
    from normrepro import exit_status

    planned = [cfg for study in STUDIES for cfg in RUNS[study]]
    exit_status.end_of_grid(workflow, planned, RESULTS, ended_ok=False)
