# Parse time: validate params (schema + catalog), expand the grid, sync the run configs.
import os
import re
import sys
from pathlib import Path

from normrepro import gpu_slots
from normrepro import grid


include: "locks.smk"  # a killed run's stale lock is cleared when that is safe


# `--config device=cpu|cuda|auto` picks the trainers' device; it is not a params.yaml key.
DEVICE = str(config.pop("device", "auto"))
try:
    # `config` is params.yaml with any --config overrides on top (e.g. scale=smoke).
    PARAMS, RUNS = grid.plan(config)
except grid.ParamsError as err:
    raise WorkflowError(str(err)) from None

RESULTS = "results"
STUDIES = list(RUNS)
# Each run's resolved config is an input of its train job, rewritten only when its content
# changes: editing one value reruns exactly the runs it touches, with or without .snakemake/.
grid.sync_run_configs([r for runs in RUNS.values() for r in runs], RESULTS)
SCALE = PARAMS["scale"]
# Aggregation and the report read the grid's own effective params: params.yaml with every
# --configfile overlay and --config value on top (not only `scale`), or they would plan other
# configs than the runs have and count every run as stale.
EFFECTIVE_PARAMS = f"{RESULTS}/params.effective.json"
if workflow.is_main_process:
    grid.write_effective_params(config, EFFECTIVE_PARAMS)
REPORT = "reports/index.html"
# A train job claims the `gpu` resource only where a GPU is visible, so that on a CPU-only
# machine `--resources gpu=1` does not serialize the grid. The SLURM profile sets gpu=1 itself.
HAS_GPU = grid.gpu_visible()
GPU_PER_JOB = 1 if HAS_GPU and DEVICE != "cpu" else 0
# Each train job holds a GPU of its own (src/gpu_slots.py), so `--resources gpu=N` must not
# promise more GPUs than the machine shows: refused here, before any job starts. Under Slurm
# (SLURM_JOB_ID) the GPUs are Slurm's to give.
if workflow.is_main_process and not os.environ.get("SLURM_JOB_ID"):
    try:
        gpu_slots.check_request(
            gpu_slots.resource_value(workflow.global_resources.get("gpu")),
            len(gpu_slots.usable_gpus()),
        )
    except ValueError as err:
        raise WorkflowError(str(err)) from None


def run_metrics(study):
    return [f"{RESULTS}/runs/{study}/{r['run_id']}/metrics.json" for r in RUNS[study]]


def run_configs(study):
    return [f"{RESULTS}/configs/{study}/{r['run_id']}.json" for r in RUNS[study]]


def summaries():
    return [f"{RESULTS}/summaries/{s}/summary.json" for s in STUDIES]


# ---- packs of runs (runtime.pack): the rules are made in train.smk


def pack_rule_name(pack):
    """train_pack_<study>__<first run id>, with every non-word character as `_`."""
    first = re.sub(r"\W", "_", f"{pack[0]['study']}__{pack[0]['run_id']}")
    return f"train_pack_{first}"


def inherit_train_settings(name):
    """What --set-threads / --set-resources / --groups say for `train`, also for rule `name`."""
    resources, groups = workflow.resource_settings, workflow.group_settings
    for table in (
        getattr(resources, "_parsed_overwrite_threads", {}),
        getattr(resources, "_parsed_overwrite_resources", {}),
        getattr(groups, "overwrite_groups", {}),
    ):
        if "train" in table:
            table.setdefault(name, table["train"])


def join_train_group(rule_obj):
    """`--groups train=NAME` names `train` only, and Snakemake resolves groups when it builds
    the DAG (after parsing): a pack rule asks for `train`'s group at that moment, so packs and
    single runs share cluster jobs (workflow/profiles/slurm)."""

    class PackRule(type(rule_obj)):
        @property
        def group(self):
            own = super().group
            if own is None and self.workflow.non_local_exec_or_dryrun:
                return self.workflow.group_settings.overwrite_groups.get("train")
            return own

        @group.setter
        def group(self, value):
            self._group = value

    rule_obj.__class__ = PackRule
