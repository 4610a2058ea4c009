# Parse time: the config checked once, the grid planned in memory. Nothing under results/ is
# written while parsing, so a dry run writes nothing: `onstart` (a real run with work to do)
# writes the run configs and the grid's params before the first job starts.
import sys

from normrepro import gpu_slots, grid, preflight, runs
from normrepro.config import ParamsError, apply_preset, check_params


include: "locks.smk"  # a killed run's stale lock is cleared when that is safe


# `--config device=cpu|cuda|auto` picks the trainers' device; it is not a params.yaml key.
DEVICE = str(config.pop("device", "auto"))
# `--config only=<study>`: that study's runs and summary alone (README "Run one study").
ONLY = config.pop("only", None)
try:
    # `config` is params.yaml with every --configfile overlay and --config value on top.
    RAW = check_params(config)  # validated, the schema's defaults filled in
    PARAMS = apply_preset(RAW)  # the scale's preset folded in: what the grid is made of
    RUNS = grid.plan(PARAMS)  # study -> run configs
except ParamsError as err:
    preflight.refuse(str(err))
RUNS = preflight.only_study(RUNS, ONLY)
# Everything that can be checked before training (data there, batch sizes, GPUs asked for).
preflight.check_before_training(workflow, RAW, RUNS, DEVICE)

RESULTS = "results"
GRID = runs.grid_name(PARAMS)  # results/<kind>/<GRID>/...: scales and data kept apart
STUDIES = list(RUNS)
# Aggregation and the report read the grid's own params (params.yaml with every overlay and
# --config value on top), written when the run starts, so they plan exactly these runs.
EFFECTIVE_PARAMS = str(grid.params_path(RESULTS, GRID))
REPORT = "reports/index.html"
# A train job claims the `gpu` resource only where a GPU is visible, so that on a CPU-only
# machine `--resources gpu=1` does not serialize the grid. The SLURM profile sets gpu=1 itself.
GPU_PER_JOB = 1 if gpu_slots.usable_gpus() and DEVICE != "cpu" else 0

# Jobs: a cell's runs in chunks of runtime.pack's K (auto: by the device the jobs run on, a
# cluster's being a GPU). Each job's record asks for the attempt its runs need (grid.py).
PACK_DEVICE = "cuda" if GPU_PER_JOB or workflow.non_local_exec else "cpu"
JOBS = {
    (job.study, job.id): job
    for study in STUDIES
    for job in grid.jobs(RUNS[study], PARAMS["runtime"]["pack"], PACK_DEVICE)
}
LATEST = {study: grid.latest_attempts(RESULTS, GRID, study) for study in STUDIES}


def job_record(job):
    attempt = grid.record_attempt(RESULTS, job, LATEST[job.study].get(job.id))
    return str(grid.record_path(RESULTS, GRID, job.study, job.id, attempt))


def study_records(study):
    return [job_record(job) for job in JOBS.values() if job.study == study]


def job_runs(wildcards, what):
    """The job's run configs (`configs`) or run folders (`outs`), in seed order."""
    job = JOBS[(wildcards.study, wildcards.job)]
    paths = runs.config_path if what == "configs" else runs.run_dir
    return [str(paths(RESULTS, cfg)) for cfg in job.runs]


def train_args(wildcards):
    """--config RUN.json --out RUN_DIR per run of the job: src/train.py's pack arguments."""
    pairs = zip(
        job_runs(wildcards, "configs"), job_runs(wildcards, "outs"), strict=True
    )
    return " ".join(f"--config {c} --out {o}" for c, o in pairs)


def summaries():
    return [f"{RESULTS}/summaries/{GRID}/{s}/summary.json" for s in STUDIES]


onstart:
    # A real run with work to do (never a dry run): the run configs its jobs read (each written
    # only when its content changes) and this grid's params, marked the grid last run here.
    grid.write_run_configs(
        [cfg for study in STUDIES for cfg in RUNS[study]], RESULTS
    )
    grid.record_grid(RESULTS, GRID, config)
