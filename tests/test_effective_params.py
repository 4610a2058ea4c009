"""Aggregation and the report plan with the grid's own params (Snakemake's merged config,
recorded when a real run starts: results/params/<grid>.json), so a --configfile overlay such as
the offline CIFAR-10 one reaches them: otherwise they plan other configs and count every run as
stale. A dry run records nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from test_faults import make_params, make_repo

from normrepro import config, grid, runs

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def test_recorded_params_plan_exactly_the_runs_snakemake_planned(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "workflow/configs/cifar10-jpeg.yaml").read_text())
    merged = config.deep_merge(config.deep_merge(raw, overlay), {"scale": "laptop"})  # Snakemake's
    planned = grid.plan(config.apply_preset(config.check_params(merged)))
    name = planned["batch_sweep"][0]["grid"]
    path = grid.record_grid(tmp_path, name, merged)
    assert json.loads(grid.last_grid_path(tmp_path).read_text())["params"] == str(path)
    mtime = path.stat().st_mtime_ns
    grid.record_grid(tmp_path, name, merged)  # same content: the file is left alone
    assert path.stat().st_mtime_ns == mtime
    params = config.load_params(path)
    # 5e-05 survives as a number (YAML 1.1 would read it back as a string) ...
    assert params["recipes"]["nf"]["optim"]["weight_decay"] == 5e-05
    # ... and every run has the hash the grid gave it: nothing reads as stale.
    again = grid.plan(params)
    hashes = {n: [r["config_hash"] for r in cfgs] for n, cfgs in planned.items()}
    assert {n: [r["config_hash"] for r in cfgs] for n, cfgs in again.items()} == hashes
    assert {r["data"]["name"] for r in again["batch_sweep"]} == {"imagefolder"}
    # params.yaml plus `scale` alone plans other configs, in another grid's folders.
    plain = grid.load(overrides={"scale": "laptop"})[1]["batch_sweep"][0]
    assert plain["config_hash"] not in hashes["batch_sweep"] and plain["grid"] != name


def test_config_device_picks_the_trainers_device_and_is_not_a_params_key(tmp_path):
    """`--config device=cpu` reaches every train command and is not rejected as an unknown
    params.yaml key (nor recorded in the grid's params); a dry run records nothing, a real
    run records the grid it ran."""
    repo = make_repo(tmp_path, make_params(epochs=1, n_seeds=1))
    cmd = [SNAKEMAKE, "-p", "--cores", "1", "--config", "device=cpu"]
    proc = subprocess.run([*cmd, "-n"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    commands = [line for line in proc.stdout.splitlines() if "src/train.py" in line]
    assert commands and all("--device cpu" in line for line in commands)
    assert not (repo / "results").exists()
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = json.loads(grid.last_grid_path(repo / "results").read_text())
    recorded = json.loads(Path(repo / last["params"]).read_text())
    assert "device" not in recorded and recorded["scale"] == "full"
    assert last["grid"] == runs.grid_name(config.load_params(repo / "params.yaml"))
