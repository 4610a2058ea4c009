"""Aggregation and the report plan with the grid's own effective params (Snakemake's merged
config, written by workflow/rules/common.smk), so a --configfile overlay such as the offline
CIFAR-10 one reaches them: otherwise they plan other configs and count every run as stale."""

from __future__ import annotations

from pathlib import Path

import yaml

from normrepro import grid

ROOT = Path(__file__).resolve().parents[1]


def test_effective_params_file_plans_exactly_the_runs_snakemake_planned(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "workflow/configs/cifar10-jpeg.yaml").read_text())
    config = grid.deep_merge(grid.deep_merge(raw, overlay), {"scale": "laptop"})  # as Snakemake
    _, planned = grid.plan(config)
    path = tmp_path / "params.effective.json"
    grid.write_effective_params(config, path)
    mtime = path.stat().st_mtime_ns
    grid.write_effective_params(config, path)  # same content: the file is left alone
    assert path.stat().st_mtime_ns == mtime
    params = grid.load_params(path)
    # 5e-05 survives as a number (YAML 1.1 would read it back as a string) ...
    assert params["recipes"]["nf"]["optim"]["weight_decay"] == 5e-05
    # ... and every run has the hash the grid gave it: nothing reads as stale.
    again = {n: grid.study_runs(params, n) for n in grid.studies(params)}
    hashes = {n: [r["config_hash"] for r in runs] for n, runs in planned.items()}
    assert {n: [r["config_hash"] for r in runs] for n, runs in again.items()} == hashes
    assert {r["data"]["name"] for r in again["batch_sweep"]} == {"imagefolder"}
    # params.yaml plus `scale` alone (what the rules passed before) plans other configs.
    plain = grid.load_params(overrides={"scale": "laptop"})
    assert grid.study_runs(plain, "batch_sweep")[0]["config_hash"] not in hashes["batch_sweep"]


def test_config_device_picks_the_trainers_device_and_is_not_a_params_key(tmp_path):
    """`--config device=cpu` reaches every train command and is not rejected as an unknown
    params.yaml key (nor written into the effective params)."""
    import json
    import subprocess
    import sys

    from test_grid import _copy_repo

    repo = _copy_repo(tmp_path)
    snakemake = str(Path(sys.executable).parent / "snakemake")
    cmd = [snakemake, "-n", "-p", "--cores", "1", "--config", "scale=smoke", "device=cpu"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    commands = [line for line in proc.stdout.splitlines() if "src/train.py" in line]
    assert commands and all("--device cpu" in line for line in commands)
    effective = json.loads((repo / "results" / "params.effective.json").read_text())
    assert "device" not in effective and effective["scale"] == "smoke"
