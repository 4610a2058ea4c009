"""The grid: params.yaml -> runs, with counts computed independently from the raw YAML, and
Snakemake's rerun decisions checked in a temporary copy of the repository without .snakemake/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from normrepro import grid

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def expected_counts(params: dict, scale: str) -> dict[str, int]:
    """Runs per enabled study, written out from the YAML without src/grid.py."""
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


@pytest.mark.parametrize("scale", ["full", "smoke"])
def test_run_counts_match_the_study_definitions(scale):
    params = grid.load_params(ROOT / "params.yaml", {"scale": scale})
    got = {name: len(grid.study_runs(params, name)) for name in grid.studies(params)}
    assert got == expected_counts(raw_params(), scale)
    ids = [f"{r['study']}/{r['run_id']}" for r in grid.expand_runs(params)]
    assert len(ids) == len(set(ids))


def test_seed_counts_follow_the_issue():
    # At least 5 seeds for the ResNet-20 studies, 3 elsewhere (full scale).
    for name, study in raw_params()["studies"].items():
        models = [v["model"] for v in study.get("variants", [])] + study.get("models", [])
        minimum = 5 if set(models) == {"resnet20"} else 3
        assert study["n_seeds"] >= minimum, name


def test_linear_lr_scaling_and_milestone_scaling():
    params = grid.load_params(ROOT / "params.yaml", {"scale": "full"})
    runs = grid.study_runs(params, "batch_sweep")
    base = params["recipes"]["resnet20"]["lr"]
    for r in runs:
        assert r["lr"] == pytest.approx(base * r["batch_size"] / 128)
    wrn = grid.study_runs(params, "wrn_table")[0]
    assert wrn["optim"]["milestones"] == [60, 90, 120, 200]
    smoke = grid.load_params(ROOT / "params.yaml", {"scale": "smoke"})
    wrn_smoke = grid.study_runs(smoke, "wrn_table")[0]
    epochs = raw_params()["smoke"]["epochs"]
    assert wrn_smoke["epochs"] == epochs
    # 60/250, 90/250, 120/250, 200/250 of the smoke epochs, rounded, at least epoch 1.
    assert wrn_smoke["optim"]["milestones"] == sorted(
        {max(1, round(m * epochs / 250)) for m in (60, 90, 120, 200)}
    )


def test_config_hash_is_a_content_hash():
    params = grid.load_params(ROOT / "params.yaml", {"scale": "full"})
    a, b = grid.study_runs(params, "batch_sweep")[:2]
    assert a["config_hash"] != b["config_hash"]
    changed = json.loads(json.dumps(a))
    changed["lr"] *= 2
    assert grid.config_hash(changed) != a["config_hash"]
    assert grid.config_hash(json.loads(json.dumps(a))) == a["config_hash"]


def test_val_split_seed_does_not_vary_with_run_seed():
    params = grid.load_params(ROOT / "params.yaml", {"scale": "full"})
    runs = grid.study_runs(params, "batch_sweep")
    assert len({r["seed"] for r in runs}) == 5
    assert len({r["data"]["split_seed"] for r in runs}) == 1


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
    ],
)
def test_bad_params_name_the_key_the_value_and_what_is_allowed(mutate, must_contain):
    params = _params_with(mutate)
    with pytest.raises(grid.ParamsError) as err:
        grid.resolve_params(params)
    message = str(err.value)
    for text in must_contain:
        assert text in message, f"{text!r} not in {message!r}"


# ------------------------------------------------------------------ snakemake dry runs


def _copy_repo(tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    dst.mkdir()
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, dst / name)
    for name in ("src", "workflow"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def dry_run_jobs(repo: Path, *targets: str, config: str = "scale=full") -> dict[str, int]:
    """Rule name -> number of jobs `snakemake -n` plans."""
    proc = subprocess.run(
        [SNAKEMAKE, *targets, "-n", "--cores", "1", "--config", config],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    jobs = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def _finish_all(repo: Path, scale: str = "full") -> None:
    """Pretend every planned run finished: a metrics.json with the run's config hash."""
    params = grid.load_params(repo / "params.yaml", {"scale": scale})
    for cfg in grid.expand_runs(params):
        path = grid.run_dir(repo / "results", cfg) / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"status": "ok", "config_hash": cfg["config_hash"]}))


def test_dry_run_lists_every_run_quickly(tmp_path):
    repo = _copy_repo(tmp_path)
    start = time.perf_counter()
    jobs = dry_run_jobs(repo)
    elapsed = time.perf_counter() - start
    n_runs = sum(expected_counts(raw_params(), "full").values())
    n_studies = len(expected_counts(raw_params(), "full"))
    # Every run once: alone (`train`) or in a pack (runtime.pack: one rule per pack).
    params = grid.resolve_params(raw_params())
    device = "cuda" if grid.gpu_visible() else "cpu"
    packs = grid.plan_packs(
        grid.expand_runs(params), repo / "results", grid.pack_setting(params), device
    )
    assert jobs["train"] == sum(len(p) == 1 for p in packs)
    assert (
        sum(n for rule, n in jobs.items() if rule.startswith("train_pack_"))
        == len(packs) - jobs["train"]
    )
    assert sum(map(len, packs)) == n_runs
    assert jobs["aggregate"] == n_studies
    assert jobs["report"] == 1
    assert elapsed < 5.0, f"snakemake -n took {elapsed:.1f} s"


def test_edit_reruns_exactly_the_touched_runs(tmp_path):
    repo = _copy_repo(tmp_path)
    dry_run_jobs(repo, "train_all")  # parse: writes the configs
    _finish_all(repo)
    assert dry_run_jobs(repo, "train_all").get("train", 0) == 0

    # A fresh clone / DVC checkout: configs newer than metrics, no .snakemake/ -> nothing reruns.
    shutil.rmtree(repo / ".snakemake", ignore_errors=True)
    later = time.time() + 100
    for cfg in (repo / "results" / "configs").rglob("*.json"):
        import os

        os.utime(cfg, (later, later))
    assert dry_run_jobs(repo, "train_all").get("train", 0) == 0

    # Change one study's lr: exactly that study's runs.
    params = raw_params()
    params["studies"]["nf_final"]["lr"] = 0.02
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(repo / ".snakemake", ignore_errors=True)
    n_final = expected_counts(params, "full")["nf_final"]
    assert dry_run_jobs(repo, "train_all")["train"] == n_final

    # Add a seed to another study: only the new runs (plus the still-pending nf_final ones).
    params["studies"]["wrn_table"]["n_seeds"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(repo / ".snakemake", ignore_errors=True)
    n_variants = len(params["studies"]["wrn_table"]["variants"])
    assert dry_run_jobs(repo, "train_all")["train"] == n_final + n_variants
