"""The config (one check, one set of defaults, the preset applied once) and the grid (runs,
cells, jobs), with counts computed independently from the raw YAML, and Snakemake's plan
checked in a temporary copy of the repository (dry runs only: nothing is trained here)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from normrepro import config, grid, run_config, runs, studies

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def expected_counts(params: dict, scale: str) -> dict[str, int]:
    """Runs per enabled study, written out from the YAML without normrepro."""
    smoke = params["smoke"] if scale == "smoke" else {}
    counts = {}
    for name, study in params["studies"].items():
        study = {**study, **smoke.get("studies", {}).get(name, {})}
        if not study.get("enabled", True):
            continue
        n_variants = (
            len(study["variants"])
            if "variants" in study
            else len(study["models"]) * len(study["norms"])
        )
        n_seeds = min(study["n_seeds"], smoke.get("n_seeds", study["n_seeds"]))
        counts[name] = (
            n_variants
            * len(study.get("norm_kw", [{}]))
            * len(study["batch_sizes"])
            * len(study.get("lrs", [None]))
            * n_seeds
        )
    return counts


def resolve(raw: dict) -> dict[str, list[dict]]:
    """What Snakemake plans from a raw config: checked, preset applied, expanded."""
    return grid.plan(config.apply_preset(config.check_params(raw)))


@pytest.mark.parametrize("scale", ["full", "smoke"])
def test_run_counts_match_the_study_definitions(scale):
    _, planned = grid.load(ROOT / "params.yaml", {"scale": scale})
    assert {name: len(cfgs) for name, cfgs in planned.items()} == expected_counts(
        raw_params(), scale
    )
    ids = [f"{r['study']}/{r['run_id']}" for cfgs in planned.values() for r in cfgs]
    assert len(ids) == len(set(ids))


def test_seed_counts_follow_the_issue():
    # At least 5 seeds for the ResNet-20 studies, 3 elsewhere (full scale).
    for name, study in raw_params()["studies"].items():
        models = [v["model"] for v in study.get("variants", [])] + study.get("models", [])
        minimum = 5 if set(models) == {"resnet20"} else 3
        assert study["n_seeds"] >= minimum, name


def test_linear_lr_scaling_and_milestone_scaling():
    params, planned = grid.load(ROOT / "params.yaml", {"scale": "full"})
    base = params["recipes"]["resnet20"]["lr"]
    for r in planned["batch_sweep"]:
        assert r["lr"] == pytest.approx(base * r["batch_size"] / 128)
    assert planned["wrn_table"][0]["optim"]["milestones"] == [60, 90, 120, 200]
    _, smoke = grid.load(ROOT / "params.yaml", {"scale": "smoke"})
    wrn_smoke = smoke["wrn_table"][0]
    epochs = raw_params()["smoke"]["epochs"]
    assert wrn_smoke["epochs"] == epochs
    # 60/250, 90/250, 120/250, 200/250 of the smoke epochs, rounded, at least epoch 1.
    assert wrn_smoke["optim"]["milestones"] == sorted(
        {max(1, round(m * epochs / 250)) for m in (60, 90, 120, 200)}
    )


def test_config_hash_is_a_content_hash():
    _, planned = grid.load(ROOT / "params.yaml", {"scale": "full"})
    a, b = planned["batch_sweep"][:2]
    assert a["config_hash"] != b["config_hash"]
    changed = json.loads(json.dumps(a))
    changed["lr"] *= 2
    assert config.config_hash(changed) != a["config_hash"]
    assert config.config_hash(json.loads(json.dumps(a))) == a["config_hash"]


def test_val_split_seed_does_not_vary_with_run_seed():
    _, planned = grid.load(ROOT / "params.yaml", {"scale": "full"})
    assert len({r["seed"] for r in planned["batch_sweep"]}) == 5
    assert len({r["data"]["split_seed"] for r in planned["batch_sweep"]}) == 1


# ------------------------------------------------------------------ one config, one default


def test_the_schema_defaults_are_the_only_defaults():
    """A params.yaml that leaves out every key that has a default gets the schema's value, and
    nothing else in the package restates one (a run config filled from the schema is what the
    grid writes)."""
    raw = raw_params()
    for key in ("val_size", "split_seed", "download", "train_subset", "test_subset"):
        del raw["data"][key]
    for key in ("eval_batch_size", "pack"):
        del raw["runtime"][key]
    params = config.check_params(raw)
    schema = yaml.safe_load(config.SCHEMA.read_text())["$defs"]
    data_defaults = schema["data_complete"]["allOf"][1]["properties"]
    runtime_defaults = schema["runtime_complete"]["allOf"][1]["properties"]
    assert params["data"]["val_size"] == data_defaults["val_size"]["default"] == 5000
    assert params["data"]["download"] is data_defaults["download"]["default"] is True
    assert params["runtime"]["eval_batch_size"] == runtime_defaults["eval_batch_size"]["default"]
    assert params["runtime"]["pack"] == runtime_defaults["pack"]["default"] == "auto"
    cfg = grid.study_runs(config.apply_preset(params), "batch_sweep")[0]
    assert cfg["eval_batch_size"] == 1000 and "pack" not in cfg["runtime"]
    # The grid's run config is complete: filling defaults again changes nothing.
    assert run_config.resolve_run_config(cfg) == cfg


@pytest.mark.parametrize("key", ["momentum", "label_smoothing"])
def test_params_and_run_configs_agree_on_the_range_of(key):
    """[0, 1) in both: the schema rejects 1 in params.yaml as the run-config check does."""
    raw = raw_params()
    raw["recipes"]["resnet20"]["optim"][key] = 1.0
    with pytest.raises(config.ParamsError, match=rf"recipes\.resnet20\.optim\.{key}: got 1\.0"):
        config.check_params(raw)
    cfg = grid.load(ROOT / "params.yaml", {"scale": "smoke"})[1]["batch_sweep"][0]
    cfg["optim"][key] = 1.0
    with pytest.raises(ValueError, match=rf"optim\.{key}: got 1\.0; allowed: a number in \[0, 1\)"):
        run_config.resolve_run_config({k: v for k, v in cfg.items() if k != "config_hash"})
    raw["recipes"]["resnet20"]["optim"][key] = 0.5
    config.check_params(raw)  # just inside


def test_study_kinds_come_from_the_study_modules():
    """Every module of normrepro.studies is a kind params.yaml may name, and nothing else is."""
    kinds = studies.kind_names()
    modules = {p.stem for p in (ROOT / "src/normrepro/studies").glob("*.py")}
    assert set(kinds) <= modules and "generic" in kinds
    kind_rule = yaml.safe_load(config.SCHEMA.read_text())["$defs"]["study"]["properties"]["kind"]
    assert "enum" not in kind_rule  # no second list of kinds
    for kind in kinds:
        raw = raw_params()
        raw["studies"]["batch_sweep"]["kind"] = kind
        config.check_params(raw)
    raw["studies"]["batch_sweep"]["kind"] = "histogram"
    with pytest.raises(config.ParamsError) as err:
        config.check_params(raw)
    assert f"studies.batch_sweep.kind: got 'histogram'; allowed: {', '.join(kinds)}" in str(
        err.value
    )


def test_the_preset_is_applied_once_each_value_from_its_most_specific_place():
    raw = raw_params()
    raw["scale"] = "smoke"
    raw["smoke"]["studies"]["nf_final"]["n_seeds"] = 3  # a trim wins over the preset's cap
    raw["smoke"]["optim"] = {"weight_decay": 0.0}
    raw["smoke"]["studies"]["wrn_table"]["optim"] = {"weight_decay": 1e-3}
    once = config.apply_preset(config.check_params(raw))
    assert config.apply_preset(once) == once  # a second application changes nothing
    assert once["studies"]["nf_final"]["n_seeds"] == 3  # the trim (the study says 3, cap 2)
    assert once["studies"]["batch_sweep"]["n_seeds"] == 2  # min(5, the preset's 2)
    assert once["studies"]["nf_final"]["epochs"] == raw["smoke"]["studies"]["nf_final"]["epochs"]
    assert once["studies"]["norm_compare"]["epochs"] == raw["smoke"]["epochs"]  # not 100
    assert once["studies"]["batch_sweep"]["optim"]["weight_decay"] == 0.0
    assert once["studies"]["wrn_table"]["optim"]["weight_decay"] == 1e-3
    assert once["data"]["name"] == raw["smoke"]["data"]["name"]
    assert once["runtime"]["eval_batch_size"] == raw["smoke"]["runtime"]["eval_batch_size"]
    cfgs = grid.plan(once)
    assert {c["model_kw"]["depth"] for c in cfgs["batch_sweep"]} == {
        raw["smoke"]["model_kw"]["resnet20"]["depth"]
    }


# ------------------------------------------------------------------ rejections


def _params_with(mutate) -> dict:
    params = raw_params()
    mutate(params)
    return params


@pytest.mark.parametrize(
    "mutate, must_contain",
    [
        (lambda p: p.update(bogus=1), ["bogus", "unknown key"]),
        (lambda p: p["data"].update(name="imagenet"), ["data.name", "imagenet", "cifar10"]),
        (
            lambda p: p["studies"]["batch_sweep"].update(batch_sizes="8"),
            ["studies.batch_sweep.batch_sizes", "'8'"],
        ),
        (
            lambda p: p["studies"]["batch_sweep"].update(batch_sizes=[0]),
            ["studies.batch_sweep.batch_sizes[0]", "0", ">= 1"],
        ),
        (lambda p: p["studies"]["batch_sweep"].update(batch_sizes=[]), ["batch_sizes", "[]"]),
        (
            lambda p: p["studies"]["norm_compare"]["variants"].append(
                {"model": "resnet20", "norm": "batchnorm"}
            ),
            ["norm_compare", "batchnorm", "gn_ws"],
        ),
        (
            lambda p: p["studies"]["norm_compare"]["variants"].append(
                {"model": "resnet21", "norm": "bn"}
            ),
            ["norm_compare", "resnet21", "resnet20"],
        ),
        (
            lambda p: p["studies"]["group_sweep"].update(norm_kw=[{"groups": 3}]),
            ["group_sweep", "3", "16"],
        ),
        (
            lambda p: p["recipes"]["wrn"]["optim"].update(schedule="poly"),
            ["recipes.wrn.optim.schedule", "poly", "cosine"],
        ),
        (lambda p: p.update(scale="medium"), ["scale", "medium", "smoke"]),
        (
            lambda p: p["studies"]["wrn_table"].update(recipe="nope"),
            ["studies.wrn_table.recipe", "nope", "resnet20"],
        ),
        (
            lambda p: p["smoke"]["studies"].update(nosuch={"n_seeds": 1}),
            ["smoke.studies.nosuch", "unknown study"],
        ),
        (
            lambda p: p["studies"]["nf_grid"].update(lrs=[-0.1]),
            ["studies.nf_grid.lrs[0]", "-0.1", "> 0"],
        ),
        (  # a preset's trim is checked as the study keys it replaces, in the same one pass
            lambda p: p["smoke"]["studies"]["batch_sweep"].update(batch_sizes=[0]),
            ["smoke.studies.batch_sweep.batch_sizes[0]", ">= 1"],
        ),
    ],
)
def test_bad_params_name_the_key_the_value_and_what_is_allowed(mutate, must_contain):
    params = _params_with(mutate)
    with pytest.raises(config.ParamsError) as err:
        resolve(params)
    message = str(err.value)
    for text in must_contain:
        assert text in message, f"{text!r} not in {message!r}"


# ------------------------------------------------------------------ jobs


def test_jobs_are_a_cells_seeds_in_chunks_fixed_by_the_grid_not_the_disk(tmp_path):
    raw = raw_params()
    raw["studies"]["nf_grid"]["n_seeds"] = 5
    cfgs = resolve(raw)["nf_grid"]  # 3 lrs x 4 batch sizes = 12 cells of 5 seeds
    jobs = grid.jobs(cfgs, 2, "cpu")
    # ceil(5 / 2) = 3 chunks per cell: seeds {0, 1}, {2, 3}, {4}
    assert len(jobs) == 12 * math.ceil(5 / 2)
    assert sorted({tuple(c["seed"] for c in j.runs) for j in jobs}) == [(0, 1), (2, 3), (4,)]
    for job in jobs:
        assert len({runs.cell_key(c) for c in job.runs}) == 1
        first, last = job.runs[0], job.runs[-1]
        cell = first["run_id"].removesuffix(f"-s{first['seed']}")
        seeds = f"s{first['seed']}" if first is last else f"s{first['seed']}-{last['seed']}"
        assert job.id == f"{cell}-{seeds}"  # resnet...-bs32-s0-1: its cell and its seeds
    assert sorted(c["run_id"] for j in jobs for c in j.runs) == sorted(c["run_id"] for c in cfgs)
    assert grid.jobs(cfgs, "off", "cpu") == grid.jobs(cfgs, 1, "cpu")
    assert all(len(j.runs) == 1 and j.id == j.runs[0]["run_id"] for j in grid.jobs(cfgs, 1, "cpu"))
    # A sixth seed: one new job (seed 5 joins seed 4's chunk), every other job as it was.
    raw["studies"]["nf_grid"]["n_seeds"] = 6
    more = grid.jobs(resolve(raw)["nf_grid"], 2, "cpu")
    assert {j.id for j in more} - {j.id for j in jobs} == {
        j.id.replace("-s4", "-s4-5") for j in jobs if j.id.endswith("-s4")
    }


def _finish(results: Path, cfg: dict, status: str = "ok", config_hash: str | None = None):
    d = runs.run_dir(results, cfg)
    d.mkdir(parents=True, exist_ok=True)
    h = cfg["config_hash"] if config_hash is None else config_hash
    (d / runs.METRICS).write_text(json.dumps({"status": status, "config_hash": h}))


def test_a_job_is_asked_for_again_exactly_when_one_of_its_runs_is_unfinished(tmp_path):
    """The record a grid asks for: the next attempt's (missing, so the job runs) when a run of
    the job is not finished under its config; the latest one's otherwise."""
    cfgs = resolve(raw_params())["nf_final"]
    (job,) = grid.jobs(cfgs, len(cfgs), "cpu")
    results = tmp_path / "results"
    assert grid.record_attempt(results, job, None) == 0  # never run
    for cfg in cfgs:
        _finish(results, cfg)
    assert grid.record_attempt(results, job, 0) == 0  # done: its record stands
    for damage in (
        lambda d: (d / runs.METRICS).unlink(),  # deleted by hand
        lambda d: (d / runs.METRICS).write_text('{"status": "ok", "config'),  # cut short
        lambda d: _finish(results, cfgs[1], "failed"),  # crashed
        lambda d: _finish(results, cfgs[1], config_hash="another config"),  # stale
    ):
        damage(runs.run_dir(results, cfgs[1]))
        assert grid.record_attempt(results, job, 3) == 4
        _finish(results, cfgs[1])
        assert grid.record_attempt(results, job, 3) == 3
    grid.write_job_record(grid.record_path(results, "g", "nf_final", job.id, 2), [], 0)
    grid.write_job_record(grid.record_path(results, "g", "nf_final", job.id, 7), [], 0)
    assert grid.latest_attempts(results, "g", "nf_final") == {job.id: 7}


# ------------------------------------------------------------------ snakemake dry runs


def _copy_repo(tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    dst.mkdir()
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, dst / name)
    for name in ("src", "workflow"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def dry_run(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        [SNAKEMAKE, "-n", "--cores", "1", *args], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def job_counts(out: str) -> dict[str, int]:
    """Rule name -> number of jobs a dry run's summary table plans."""
    return {
        m.group(1): int(m.group(2))
        for line in out.splitlines()
        if (m := re.match(r"^(\w+)\s+(\d+)$", line.strip())) and m.group(1) != "total"
    }


def test_dry_run_lists_every_job_quickly_and_writes_nothing(tmp_path):
    repo = _copy_repo(tmp_path)
    raw = raw_params()
    raw["runtime"]["pack"] = 3  # an explicit K, so the job count does not depend on a policy
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    start = time.perf_counter()
    jobs = job_counts(dry_run(repo, "--config", "scale=full"))
    elapsed = time.perf_counter() - start
    counts = expected_counts(raw, "full")
    seeds = {n: s["n_seeds"] for n, s in raw["studies"].items()}
    # Every cell (a study's runs / its seeds) in ceil(seeds / 3) jobs.
    assert jobs["train"] == sum(n // seeds[s] * math.ceil(seeds[s] / 3) for s, n in counts.items())
    assert jobs["aggregate"] == len(counts)
    assert jobs["report"] == 1
    assert not (repo / "results").exists()  # planned in memory: a dry run writes nothing
    assert elapsed < 5.0, f"snakemake -n took {elapsed:.1f} s"
