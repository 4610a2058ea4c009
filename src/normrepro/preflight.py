"""Every mistake that can be found before training, found at Snakemake parse time.

workflow/rules/common.smk makes one call, `check_before_training`, right after the grid is planned
and before anything is written under results/: a refusal leaves every file as it was, and no job
starts. It takes the params as checked but before the scale preset (config.check_params), so a
message names where a value was written: a study, a preset, or a preset's trim of a study. All
problems are reported at once, each in the project's form (the key, the value given, what is
allowed), with no traceback. Cheap: no torch import, no image decoded (a directory listing per
class folder at most), so `snakemake -n` stays fast.

What is checked, per enabled study of the planned grid:
- its data can be had: an imagefolder root holds train and test class folders with images;
  cifar10 / fashion-mnist files are there or `data.download` is true (src/dataset_files.py);
- every batch size fits the training images left after the validation carve-out;
- at a preset scale (smoke, laptop), the preset's `data:` does not silently override part of the
  study's own `data:` block (a Fashion-MNIST run reading an imagefolder root, say);
and for the invocation: `--resources gpu=N` with N > 0 asks for GPUs this machine shows.
"""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

from normrepro import dataset_files, gpu_slots, yaml_traps

HEADER = "the grid cannot start; nothing ran and no file under results/ changed:"


class PreflightError(ValueError):
    """One or more problems found before training; `problems` lists them, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n  ".join([HEADER, *self.problems]))


# ---------------------------------------------------------------- where a value was written


def _preset(params: dict) -> dict:
    """The section named like the scale (smoke, laptop); {} at full scale."""
    section = params.get(params.get("scale"))
    return section if isinstance(section, dict) else {}


def _trim(params: dict, study: str) -> dict:
    return _preset(params).get("studies", {}).get(study, {})


def data_key(params: dict, study: str, key: str) -> str:
    """The params.yaml key a run's `data.<key>` comes from, highest first: the preset's per-study
    trim, the preset's data, the study's own data, the top-level data."""
    scale = params.get("scale")
    if key in _trim(params, study).get("data", {}):
        return f"{scale}.studies.{study}.data.{key}"
    if key in _preset(params).get("data", {}):
        return f"{scale}.data.{key}"
    if key in params["studies"][study].get("data", {}):
        return f"studies.{study}.data.{key}"
    return f"data.{key}"


def study_key(params: dict, study: str, key: str) -> str:
    """`<scale>.studies.<study>.<key>` when the preset trims it, else `studies.<study>.<key>`."""
    if key in _trim(params, study):
        return f"{params.get('scale')}.studies.{study}.{key}"
    return f"studies.{study}.{key}"


# ---------------------------------------------------------------- the data is there

SPLITS = ("train", "test")


def data_problem(data: dict, key_of) -> str | None:
    """Why a run with this `data` section could not load its dataset, or None. `key_of(k)` names
    the params.yaml key of data.k."""
    name, root = data.get("name"), str(data.get("root", "data"))
    if name == "imagefolder":
        return _imagefolder_problem(root, key_of)
    if data.get("download", True):
        return None  # torchvision fetches it (a failed download is reported by the run)
    download = f"{key_of('download')} is false"
    if name == "cifar10" and dataset_files.missing_cifar10(root):
        missing = dataset_files.missing_cifar10(root)
        return (
            f"{key_of('root')}: got {root!r}; cifar10 is not there ({missing[0]} missing) and "
            f"{download}; allowed: a folder holding torchvision's {dataset_files.CIFAR10_FOLDER}/, "
            f"or {key_of('download')}: true"
        )
    if name == "fashion-mnist" and dataset_files.find_fashion(root) is None:
        looked = " or ".join(str(d) for d in dataset_files.fashion_dirs(root))
        return (
            f"{key_of('root')}: got {root!r}; fashion-mnist is not in {looked} "
            f"({dataset_files.FASHION_FILES['train'][0]}[.gz] and the other three idx files) and "
            f"{download}; allowed: {key_of('download')}: true, or those files there "
            "(apt-get install -y dataset-fashion-mnist)"
        )
    return None


def _imagefolder_problem(root: str, key_of) -> str | None:
    where = f"{key_of('root')}: got {root!r}"
    allowed = (
        f"allowed: a folder laid out as {dataset_files.IMAGEFOLDER_LAYOUT} "
        f"(extensions {', '.join(dataset_files.IMAGE_EXTENSIONS)})"
    )
    if not os.path.isdir(root):
        return f"{where}; no such folder; {allowed}"
    counts = {split: dataset_files.count_images(os.path.join(root, split)) for split in SPLITS}
    for split in SPLITS:
        if not counts[split]:
            return f"{where}; no image in a class folder of {os.path.join(root, split)}; {allowed}"
    extra = sorted(set(counts["test"]) - set(counts["train"]))
    if extra:
        return (
            f"{where}; test classes {', '.join(extra)} have no folder under "
            f"{os.path.join(root, 'train')}; allowed: test classes that are also train classes"
        )
    return None


def pool_sizes(data: dict) -> tuple[int | None, int | None]:
    """(training pool, test set) image counts a run's data starts from, None where unknown (an
    imagefolder split with no images: data_problem says so). The synthetic set is made to size:
    train_subset + val_size pool images (data.load_splits)."""
    name = data.get("name")
    if name == "imagefolder":
        root = str(data.get("root"))
        counts = [dataset_files.count_images(os.path.join(root, s)) for s in SPLITS]
        return sum(counts[0].values()) or None, sum(counts[1].values()) or None
    if name == "synthetic":
        subset = data.get("train_subset")
        pool = subset + data.get("val_size", 0) if subset else dataset_files.SYNTHETIC_TRAIN
        return pool, None  # made to test_subset's size
    return dataset_files.FULL_TRAIN.get(name), dataset_files.FULL_TEST.get(name)


def split_problem(data: dict, key_of) -> str | None:
    """val_size, then train_subset, drawn from the training pool; test_subset from the test set:
    each must fit (data.check_data_config says the same, but only once a run has started)."""
    pool, tests = pool_sizes(data)
    name, val, subset = data.get("name"), data.get("val_size", 0), data.get("train_subset")
    if pool is not None and val >= pool:
        return (
            f"{key_of('val_size')}: got {val}; allowed: fewer than the {pool} images of the "
            f"{name} training pool"
        )
    if pool is not None and subset is not None and val + subset > pool:
        return (
            f"{key_of('train_subset')}: got {subset}; allowed: at most the {pool - val} images "
            f"left of the {pool}-image {name} training pool after {key_of('val_size')} = {val} "
            "validation images"
        )
    test_subset = data.get("test_subset")
    if tests is not None and test_subset is not None and test_subset > tests:
        return (
            f"{key_of('test_subset')}: got {test_subset}; allowed: at most the {tests} {name} "
            "test images"
        )
    return None


def train_images(data: dict) -> int | None:
    """Images a run trains on (data.load_splits): val_size images are drawn from the pool first,
    then train_subset of the rest (all of the rest when null). None when the pool is unknown."""
    pool = pool_sizes(data)[0]
    if pool is None:
        return None
    subset = data.get("train_subset")
    return subset if subset is not None else pool - data.get("val_size", 0)


def batch_problem(params: dict, study: str, runs: list[dict]) -> str | None:
    """The study's batch sizes larger than the images its runs train on, or None (also when the
    split itself does not fit: split_problem reports that)."""
    data = runs[0]["data"]
    n_train = train_images(data)
    if n_train is None or n_train <= 0:
        return None
    too_big = sorted({r["batch_size"] for r in runs if r["batch_size"] > n_train})
    if not too_big:
        return None
    if data.get("train_subset") is not None:
        source = f"{data_key(params, study, 'train_subset')} = {data['train_subset']}"
    else:
        source = (
            f"the {pool_sizes(data)[0]}-image {data.get('name')} training pool less "
            f"{data_key(params, study, 'val_size')} = {data.get('val_size', 0)} validation images"
        )
    got = too_big[0] if len(too_big) == 1 else too_big
    return (
        f"{study_key(params, study, 'batch_sizes')}: got {got}; allowed: batch sizes up to the "
        f"{n_train} training images ({source})"
    )


# ---------------------------------------------------------------- the preset keeps a study whole


def preset_data_problem(params: dict, study: str) -> str | None:
    """A study with its own `data:` block whose keys the scale preset's `data:` overrides (and
    the study's trim in the preset does not restate): its runs would mix two datasets' settings."""
    own = params["studies"][study].get("data") or {}
    preset = _preset(params).get("data") or {}
    if not own or not preset:
        return None
    restated = _trim(params, study).get("data") or {}
    top = params.get("data", {})
    overridden = [k for k in preset if k not in restated and preset[k] != own.get(k, top.get(k))]
    # A new dataset name changes what every key the study set means, even one the preset leaves.
    if not any(k in own for k in overridden) and "name" not in overridden:
        return None
    scale = params.get("scale")
    trim_key = f"{scale}.studies.{study}"
    theirs = ", ".join(f"{k}: {_yaml(preset[k])}" for k in overridden)
    mine = ", ".join(f"{k}: {_yaml(v)}" for k, v in own.items())
    return (
        f"studies.{study}.data: got {{{mine}}}, and the {scale} preset's {scale}.data sets "
        f"{theirs} on top of it, so this study's runs would mix the two; allowed: the study's data "
        f"at this scale in {trim_key}.data (it wins over {scale}.data), or {trim_key}: "
        "{enabled: false}"
    )


def _yaml(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


# ---------------------------------------------------------------- the GPUs asked for are there


def gpu_problem(requested: int | None, usable: list[str], device: str = "auto") -> str | None:
    """`--resources gpu=N`, N > 0, on a machine that shows no GPU (a broken driver, a CPU node)
    would train the whole grid on the CPU without a word: refused, unless `--config device=cpu`
    asks for the CPU on purpose. More GPUs than shown: gpu_slots.check_request's refusal."""
    if not requested or device == "cpu":
        return None
    if not usable:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = (
            f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU"
            if hidden is not None and gpu_slots.machine_gpu_count() > 0
            else "no /dev/nvidiaN device and `nvidia-smi -L` lists none: no GPU, or no driver"
        )
        return (
            f"--resources gpu={requested}: this machine shows no GPU ({why}); allowed: gpu=0 "
            "or no --resources gpu here, --config device=cpu to train on the CPU on purpose, "
            "or a machine whose GPUs nvidia-smi lists"
        )
    try:
        gpu_slots.check_request(requested, len(usable))
    except ValueError as err:
        return str(err)
    return None


# ---------------------------------------------------------------- all checks, and the refusal


def find_problems(
    params: dict,
    runs: dict[str, list[dict]],
    gpu_request: int | None = None,
    usable_gpus: list[str] | None = None,
    device: str = "auto",
) -> list[str]:
    """Every problem of the planned grid (study -> run configs) and of the GPU request, one line
    each, in study order; [] when training can start. params: checked, before the preset
    (config.check_params); usable_gpus None: not checked."""
    found: list[str] = []
    for study, study_runs in runs.items():
        if not study_runs:
            continue
        seen = set()
        for data in (r["data"] for r in study_runs):
            key = json.dumps(data, sort_keys=True)
            if key not in seen:
                seen.add(key)
                key_of = lambda k, s=study: data_key(params, s, k)  # noqa: E731
                found.append(data_problem(data, key_of) or split_problem(data, key_of))
        found.append(preset_data_problem(params, study))
        found.append(batch_problem(params, study, study_runs))
    if usable_gpus is not None:
        found.append(gpu_problem(gpu_request, usable_gpus, device))
    unique = []  # studies sharing the top-level data report its problem once
    for line in found:
        if line and line not in unique:
            unique.append(line)
    return unique


def check_before_training(workflow, params: dict, runs: dict[str, list[dict]], device: str):
    """The parse-time call of workflow/rules/common.smk: refuse (exit 1, the problems as the last
    lines) before any job starts. Only Snakemake's main process checks (a cluster job re-parses
    the workflow on its node); the GPU request is Slurm's to meet under Slurm or a cluster
    executor, so it is not checked there."""
    if not workflow.is_main_process:
        return
    on_cluster = bool(os.environ.get("SLURM_JOB_ID")) or bool(
        getattr(workflow, "non_local_exec", False)
    )
    requested = gpu_slots.resource_value(workflow.global_resources.get("gpu"))
    problems = find_problems(
        params,
        runs,
        gpu_request=requested,
        usable_gpus=None if on_cluster else gpu_slots.usable_gpus(),
        device=device,
    )
    if problems:
        refuse(str(PreflightError(problems)))


def only_study(runs: dict[str, list[dict]], only: str | None) -> dict[str, list[dict]]:
    """`--config only=<study>` (README "Run one study"): the planned runs of that study alone,
    every study when it is not given; refused when it names no study planned at this scale."""
    if only is None:
        return runs
    if only not in runs:
        refuse(
            f"--config only: got {only!r}; allowed: a study enabled at this scale: "
            f"{', '.join(runs)}"
        )
    return {only: runs[only]}


def refuse_bad_yaml(path) -> None:
    """The Snakefile's call before `configfile:`: a YAML syntax error in params.yaml refused as
    FILE:LINE:COLUMN (Snakemake's own message says only "not valid JSON or YAML")."""
    problem = yaml_traps.check_syntax(path)
    if problem:
        refuse(problem)


def refuse(message: str) -> NoReturn:
    """End a Snakemake invocation at parse time with `message` as its last lines and exit
    status 1. Not a WorkflowError: Snakemake 9 prints one raised while a Snakefile is parsed as
    `WorkflowError in file .../common.smk, line N:` plus a traceback line of every workflow file
    it passed through (snakemake/exceptions.py: format_error), however it is raised."""
    try:
        from snakemake.logging import logger

        logger.error(f"Error: {message}")
    except ImportError:  # not under Snakemake (a test calling this directly)
        print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    """`python -m normrepro.preflight --gpus`: the number of GPUs this machine shows (0 on a
    CPU machine), for commands that cannot know it in advance: dvc.yaml's train stage passes
    `--resources gpu=$(python -m normrepro.preflight --gpus)`, which the GPU check then accepts."""
    import argparse

    ap = argparse.ArgumentParser(description="Parse-time checks of the grid (see the module).")
    ap.add_argument("--gpus", action="store_true", help="print the number of usable GPUs")
    args = ap.parse_args(argv)
    if args.gpus:
        print(len(gpu_slots.usable_gpus()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
