"""The grid: the effective params (config.py) expanded into runs, cells and jobs. The only code
that knows the grid; Snakemake calls it at parse time (no torch import), aggregation, the report
and `make status` plan with it, so a run folder outside the grid never leaks into a table.

    effective params --study_runs--> [run config, ...]  (the RUN.json contract of src/train.py)
                     --jobs-------->  [Job(study, id, runs), ...]  one Snakemake job each
    run configs      --write_run_configs--> results/configs/<grid>/<study>/<run_id>.json

A job is a run's cell (its configs equal but for the seed) and a chunk of at most K of its
seeds, K from `runtime.pack` (`pack_size`): fixed by the grid, never by what is on disk. Whether
a job must run is decided by its record (`record_attempt`), never by file times: Snakemake's
rerun triggers, whichever are on, then agree with the run folders.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from normrepro import catalog, config, pack_policy, runs
from normrepro.config import ParamsError
from normrepro.io_utils import atomic_write_json, atomic_write_text

# The axes of every study's cells, and the one its Welch tests compare levels of.
AXES = ("model", "norm", "groups", "channels_per_group", "batch_size", "lr")
COMPARE = "norm"


# ---------------------------------------------------------------- studies and runs


def studies(params: dict, include_disabled: bool = False) -> dict[str, dict]:
    """Study name -> display meta, in params.yaml order (effective params: preset applied)."""
    out = {}
    for name, s in params["studies"].items():
        if not s.get("enabled", True) and not include_disabled:
            continue
        out[name] = {
            "title": s.get("title", name),
            "seed_doc": s.get("seed_doc"),
            "kind": s.get("kind", "generic"),
            "axes": list(AXES),
            "compare": COMPARE,
            "enabled": s.get("enabled", True),
        }
    return out


def scaled_milestones(milestones: list[int], epochs: int, recipe_epochs: int) -> list[int]:
    """Milestones are written for the recipe's length; a shorter run keeps their positions."""
    if epochs == recipe_epochs:
        return list(milestones)
    return sorted({max(1, round(m * epochs / recipe_epochs)) for m in milestones})


def _variants(name: str, study: dict) -> list[dict]:
    if "variants" in study:
        return [
            {"model": v["model"], "norm": v["norm"], "norm_kw": v.get("norm_kw", {}),
             "model_kw": v.get("model_kw", {})}
            for v in study["variants"]
        ]  # fmt: skip
    if "models" not in study or "norms" not in study:
        raise ParamsError(f"studies.{name}: needs `variants`, or both `models` and `norms`")
    return [
        {"model": m, "norm": n, "norm_kw": {}, "model_kw": {}}
        for m, n in itertools.product(study["models"], study["norms"])
    ]


def run_id(cfg: dict, with_lr: bool) -> str:
    """A name a person can read: resnet20-gn-g8-bs4-s0, nf_resnet-none-lr0.01-bs64-s1."""
    parts = [cfg["model"], cfg["norm"]]
    if "groups" in cfg["norm_kw"]:
        parts.append(f"g{cfg['norm_kw']['groups']}")
    if "channels_per_group" in cfg["norm_kw"]:
        parts.append(f"cpg{cfg['norm_kw']['channels_per_group']}")
    if with_lr:
        parts.append(f"lr{cfg['lr']:g}")
    parts += [f"bs{cfg['batch_size']}", f"s{cfg['seed']}"]
    return "-".join(parts)


def _check_names(name: str, variant: dict, norm_kw: dict) -> None:
    try:
        catalog.check_model(variant["model"])
        catalog.check_norm(variant["norm"])
        allowed = catalog.allowed_norms(variant["model"])
        if variant["norm"] not in allowed:
            raise ValueError(
                f"norm {variant['norm']!r} does not apply to model {variant['model']!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        catalog.check_groups(variant["model"], variant["norm"], variant["model_kw"], norm_kw)
    except (ValueError, TypeError) as err:
        raise ParamsError(f"studies.{name}: {err}") from None


def study_runs(params: dict, name: str) -> list[dict]:
    """Every resolved run config of one study, in grid order (seed varies fastest)."""
    study = params["studies"][name]
    recipe = params["recipes"][study["recipe"]]
    epochs = study.get("epochs", recipe["epochs"])
    optim = config.deep_merge(recipe["optim"], study.get("optim", {}))
    if optim.get("milestones"):
        optim["milestones"] = scaled_milestones(optim["milestones"], epochs, recipe["epochs"])
    data = config.merge_data(params["data"], study.get("data", {}))
    runtime = {k: v for k, v in params["runtime"].items() if k not in ("eval_batch_size", "pack")}
    lrs = study.get("lrs", [study.get("lr", recipe["lr"])])
    scaling = study.get("lr_scaling")
    variants = _variants(name, study)
    norm_kws = study.get("norm_kw", [{}])
    for variant, extra_kw in itertools.product(variants, norm_kws):
        _check_names(name, variant, {**variant["norm_kw"], **extra_kw})
    grid = runs.grid_name(params)
    out = []
    for variant, extra_kw, batch_size, lr, seed in itertools.product(
        variants, norm_kws, study["batch_sizes"], lrs, range(study["n_seeds"])
    ):
        norm_kw = {**variant["norm_kw"], **extra_kw}
        model_kw = {**study.get("model_kw", {}).get(variant["model"], {}), **variant["model_kw"]}
        cfg = {
            "grid": grid,
            "study": name,
            "run_id": "",
            "model": variant["model"],
            "model_kw": model_kw,
            "norm": variant["norm"],
            "norm_kw": norm_kw,
            "norm_groups": catalog.norm_groups(
                variant["model"], variant["norm"], model_kw, norm_kw
            ),
            "batch_size": batch_size,
            "seed": seed,
            "lr": lr * batch_size / scaling["base_batch"] if scaling else lr,
            "epochs": epochs,
            "eval_batch_size": params["runtime"]["eval_batch_size"],
            "optim": optim,
            "augment": study.get("augment", recipe["augment"]),
            "normalize": study.get("normalize", recipe["normalize"]),
            "data": data,
            "runtime": runtime,
        }
        cfg["run_id"] = run_id(cfg, with_lr="lrs" in study)
        cfg["config_hash"] = config.config_hash(cfg)
        out.append(json.loads(json.dumps(cfg)))  # a deep copy, as JSON will read it back
    return _checked(name, out)


def _checked(name: str, cfgs: list[dict]) -> list[dict]:
    if not cfgs:
        raise ParamsError(f"studies.{name}: the grid is empty (an axis has no values)")
    ids = [r["run_id"] for r in cfgs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ParamsError(
            f"studies.{name}: run ids repeat ({', '.join(dupes[:3])}): two variants differ only "
            "in model_kw; split them into two studies"
        )
    return cfgs


def plan(params: dict) -> dict[str, list[dict]]:
    """Every enabled study's run configs (effective params), checked once: a bad name, groups
    that do not divide, an empty grid or repeated run ids are reported before any job starts."""
    return {name: study_runs(params, name) for name in studies(params)}


def load(path: str | Path = config.REPO / "params.yaml", overrides: dict | None = None):
    """(effective params, study -> run configs) of a params file with overrides on top."""
    params = config.load_params(path, overrides)
    return params, plan(params)


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One Snakemake job: a chunk of one cell's runs (seeds ascending), trained by one process
    (src/train.py: as one fused model, src/packing.py)."""

    study: str
    id: str  # <cell>-s<first seed>[-<last seed>]: resnet20-gn-g8-bs4-s0-4, or a run's own id
    runs: tuple[dict, ...]


def pack_size(setting, batch_size: int, device_type: str) -> int:
    """Runs per job: runtime.pack `off` (or false) -> 1, an integer K -> K, `auto` -> what
    benchmarks measured faster on this device type (pack_policy)."""
    if setting == "auto":
        return pack_policy.auto_pack_size(batch_size, device_type)
    if setting in ("off", False, None):
        return 1
    return int(setting)


def jobs(cfgs: list[dict], setting, device_type: str) -> list[Job]:
    """The runs grouped into jobs: per cell (grid order), seeds ascending, chunks of pack_size.
    A seed added to a cell joins its last chunk or starts a new one; no other job changes."""
    cells: dict[str, list[dict]] = {}
    for cfg in cfgs:
        cells.setdefault(runs.cell_key(cfg), []).append(cfg)
    out = []
    for members in cells.values():
        members.sort(key=lambda c: c["seed"])
        k = pack_size(setting, members[0]["batch_size"], device_type)
        for chunk in (members[i : i + k] for i in range(0, len(members), k)):
            cell = chunk[0]["run_id"].rsplit("-s", 1)[0]
            seeds = f"s{chunk[0]['seed']}" + (f"-{chunk[-1]['seed']}" if len(chunk) > 1 else "")
            out.append(Job(chunk[0]["study"], f"{cell}-{seeds}", tuple(chunk)))
    return out


# ---------------------------------------------------------------- job records (files on disk)


def record_path(results: str | os.PathLike, grid: str, study: str, job: str, attempt: int) -> Path:
    """What a train job writes last (the output Snakemake waits for): each run's status."""
    return Path(results) / "jobs" / grid / study / f"{job}.{attempt}.json"


def latest_attempts(results: str | os.PathLike, grid: str, study: str) -> dict[str, int]:
    """Job id -> the highest attempt with a record on disk (one listing per study)."""
    folder = Path(results) / "jobs" / grid / study
    found: dict[str, int] = {}
    try:
        names = [e.name for e in os.scandir(folder)]
    except OSError:
        return found
    for name in names:
        job, _, rest = name.rpartition(".json")[0].rpartition(".")
        if name.endswith(".json") and job and rest.isdigit():
            found[job] = max(found.get(job, -1), int(rest))
    return found


def record_attempt(results, job: Job, latest: int | None) -> int:
    """The attempt whose record the grid asks for: the latest if every run of the job finished
    under its config (nothing to do), else the next one (a missing file: the job runs, and
    trains its unfinished runs). Missing output is a rerun reason under every rerun trigger,
    with or without .snakemake/ metadata; a dry run decides the same and writes nothing."""
    if latest is None:
        return 0
    done = all(runs.finished(runs.run_dir(results, c), c["config_hash"]) for c in job.runs)
    return latest if done else latest + 1


def write_job_record(path: str | os.PathLike, run_dirs: list[Path], exit_code: int) -> None:
    """A job's record: its runs' statuses as they ended, and the trainer's exit code."""
    statuses = {}
    for d in run_dirs:
        try:
            statuses[d.name] = json.loads((d / runs.METRICS).read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            statuses[d.name] = None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"runs": statuses, "exit_code": exit_code,
                             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip


# ---------------------------------------------------------------- what a real run writes


def write_run_configs(cfgs: list[dict], results: str | os.PathLike = "results") -> int:
    """Each run's config, written only when its content changed (a run's train.py reads it).
    Returns how many were written."""
    written = 0
    for cfg in cfgs:
        path = runs.config_path(results, cfg)
        text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
        try:
            if path.read_text() == text:
                continue
        except (OSError, ValueError):  # absent, or not text (a damaged file): rewrite it
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        written += 1
    return written


def params_path(results: str | os.PathLike, grid: str) -> Path:
    """The params a grid was last run with (params.yaml with every --configfile overlay and
    --config value on top): what its aggregation and report plan with."""
    return Path(results) / "params" / f"{grid}.json"


def last_grid_path(results: str | os.PathLike) -> Path:
    return Path(results) / "last-grid.json"


def record_grid(results: str | os.PathLike, grid: str, raw: dict) -> Path:
    """Write the grid's params (only when changed) and mark it the grid last run here."""
    path = params_path(results, grid)
    text = json.dumps(raw, indent=1, sort_keys=True, default=str) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    atomic_write_json(last_grid_path(results), {"grid": grid, "params": str(path),
                                                "ran_at": time.strftime("%Y-%m-%d %H:%M:%S")})  # fmt: skip
    return path


# ---------------------------------------------------------------- which grid a command acts on


def add_grid_options(ap: argparse.ArgumentParser) -> None:
    """--params / --config / --last-grid / --results, as `make status` and `make report` pass."""
    ap.add_argument("--params", default=None, help="params file (default: params.yaml)")
    ap.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="params.yaml overrides, as given to snakemake (e.g. scale=smoke)")  # fmt: skip
    ap.add_argument("--last-grid", action="store_true",
                    help="the grid the last snakemake ran here (results/last-grid.json)")  # fmt: skip
    ap.add_argument("--results", default="results", help="results root (holds runs/)")


def params_from_cli(args: argparse.Namespace) -> tuple[dict, str]:
    """(effective params, a line saying which grid and why) from add_grid_options' arguments.
    --last-grid reads the grid the last snakemake ran (its recorded params); without one, or
    with --params / --config, params.yaml (or --params) with --config on top."""
    last = last_grid_path(args.results)
    if args.last_grid and not args.config and args.params is None:
        try:
            record = json.loads(last.read_text())
            params = config.load_params(record["params"])
            return params, (f"grid {record['grid']} (scale {params['scale']}): the last grid "
                            f"run here, {record.get('ran_at')}; SCALE=<scale> for another")  # fmt: skip
        except (OSError, ValueError, KeyError):
            pass  # no grid has run here yet: params.yaml as it is
    overrides = config.parse_overrides(args.config)
    params = config.load_params(args.params or "params.yaml", overrides)
    why = "as asked" if args.config or args.params else f"params.yaml's; no {last} yet"
    return params, f"grid {runs.grid_name(params)} (scale {params['scale']}, {why})"


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="List the runs (or jobs) params.yaml expands to.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--config", nargs="*", default=[], help="overrides, e.g. scale=smoke")
    ap.add_argument("--study", help="only this study")
    ap.add_argument("--count", action="store_true", help="print counts per study")
    args = ap.parse_args(argv)
    try:
        params, planned = load(args.params, config.parse_overrides(args.config))
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name in [args.study] if args.study else list(planned):
        cfgs = planned[name]
        if args.count:
            print(f"{name}\t{len(cfgs)}")
        else:
            print("\n".join(f"{name}/{r['run_id']}" for r in cfgs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
