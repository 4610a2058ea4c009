"""Nothing finished is ever trained again: on the finished smoke grid (conftest.smoke_grid),
Snakemake under every rerun trigger, with or without its metadata, DVC experiments, another
scale and back, dry runs, `make status` and `make report` keep every finished run as it is, and
an edit trains exactly the runs it touches. Real processes throughout (issues 21 and 23).

A run's files are compared byte for byte, with their modification times: retraining would
rewrite them. Which runs should train is computed here from the run configs alone (their config
hashes before and after an edit), independently of the planner and of Snakemake.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import BIN, copy_of, git_commit, sh

from normrepro import config, grid, runs

pytestmark = pytest.mark.slow
SNAKEMAKE = str(BIN / "snakemake")
ALL_TRIGGERS = ["--rerun-triggers", "mtime", "params", "input", "code", "software-env"]


def files_under(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its content and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def metrics_files(repo: Path) -> dict[str, tuple[bytes, int]]:
    runs_folder = repo / "results" / "runs"
    return {k: v for k, v in files_under(runs_folder).items() if k.endswith("/metrics.json")}


def planned_runs(repo: Path, overrides: dict | None = None) -> dict[str, str]:
    """'study/run_id' -> config hash, as params.yaml (with overrides) plans them."""
    _, planned = grid.load(repo / "params.yaml", overrides)
    return {
        f"{c['study']}/{c['run_id']}": c["config_hash"] for cfgs in planned.values() for c in cfgs
    }


def to_train(repo: Path, *args: str) -> set[str]:
    """'study/run_id' of each run a dry run would train: the unfinished runs of each train job
    it plans (a job skips the runs of its chunk that finished)."""
    out = sh([SNAKEMAKE, "-n", "--cores", "2", *args], repo).stdout
    params = config.load_params(repo / "params.yaml", config.parse_overrides(_config(args)))
    pack = params["runtime"]["pack"]
    jobs = {(j.study, j.id): j for cfgs in grid.plan(params).values()
            for j in grid.jobs(cfgs, pack, "cpu")}  # fmt: skip
    names = set()
    for study, job in re.findall(r"wildcards: study=(\w+), job=(\S+), attempt=\d+", out):
        for cfg in jobs[(study, job)].runs:
            if not runs.finished(runs.run_dir(repo / "results", cfg), cfg["config_hash"]):
                names.add(f"{study}/{cfg['run_id']}")
    return names


def _config(args: tuple[str, ...]) -> list[str]:
    return list(args[args.index("--config") + 1 :]) if "--config" in args else []


def edit_params(repo: Path, edit) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    edit(raw)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


# ---------------------------------------------------------------------------- a finished grid


def test_the_finished_grid_plans_nothing_under_every_rerun_trigger(smoke_grid, tmp_path):
    before = files_under(smoke_grid / "results")
    assert len(metrics_files(smoke_grid)) == 40
    for triggers in ([], ALL_TRIGGERS):
        out = sh(
            [SNAKEMAKE, "-n", "--cores", "2", *triggers, "--config", "scale=smoke"], smoke_grid
        )
        assert "Nothing to be done" in out.stdout, out.stdout[-3000:]
    # A fresh clone or a DVC workspace: no .snakemake/ metadata, every config file newer.
    repo = copy_of(smoke_grid, tmp_path / "repo")
    (repo / ".snakemake").rename(repo / "metadata-gone")
    for path in (repo / "results" / "configs").rglob("*.json"):
        path.touch()
    assert to_train(repo, *ALL_TRIGGERS, "--config", "scale=smoke") == set()
    assert files_under(smoke_grid / "results") == before  # the dry runs wrote nothing


def test_make_status_and_make_report_act_on_the_grid_last_run(smoke_grid, tmp_path):
    """params.yaml says full; the grid last run here was smoke: that is the one they show."""
    repo = copy_of(smoke_grid, tmp_path / "repo")
    status = sh(["make", "status"], repo).stdout
    smoke_name = runs.grid_name(config.load_params(repo / "params.yaml", {"scale": "smoke"}))
    assert f"grid {smoke_name} (scale smoke): the last grid run here" in status
    total = re.search(r"^total\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M)
    planned, ok, running, diverged = map(int, total.groups())
    assert planned == 40 and ok + diverged == 40 and running == 0
    full = sh(["make", "status", "SCALE=full"], repo).stdout
    assert "(scale full, as asked)" in full and re.search(r"^total\s+231\s+0\s", full, re.M)
    before = metrics_files(repo)
    (repo / "reports" / "index.html").unlink()  # the grid's own report: made anew from the runs
    report = sh(["make", "report"], repo)
    assert f"grid {smoke_name}" in report.stderr
    html = (repo / "reports" / "index.html").read_text()
    assert "Interim report" not in html  # every run of the smoke grid finished
    for study in grid.load(repo / "params.yaml", {"scale": "smoke"})[1]:
        assert f'id="{study}"' in html, study
    assert "of 231" not in html
    assert metrics_files(repo) == before


# ---------------------------------------------------------------------------- edits


def test_an_edit_trains_exactly_the_runs_whose_config_changed(smoke_grid, tmp_path):
    repo = copy_of(smoke_grid, tmp_path / "repo")
    smoke = {"scale": "smoke"}
    old = planned_runs(repo, smoke)
    edit_params(repo, lambda p: p["recipes"]["nf"]["optim"].update(weight_decay=1e-4))
    new = planned_runs(repo, smoke)
    changed = {r for r in new if new[r] != old.get(r)}
    assert changed and {r.split("/")[0] for r in changed} == {"nf_grid", "nf_final"}
    for triggers in ([], ALL_TRIGGERS):
        assert to_train(repo, *triggers, "--config", "scale=smoke") == changed
    (repo / ".snakemake").rename(repo / "metadata-gone")
    assert to_train(repo, "--config", "scale=smoke") == changed

    # Adding a seed (without DVC): exactly the new run.
    edit_params(repo, lambda p: p["recipes"]["nf"]["optim"].update(weight_decay=5e-5))
    edit_params(repo, lambda p: p["smoke"]["studies"]["nf_final"].update(n_seeds=3))
    added = set(planned_runs(repo, smoke)) - set(old)
    assert len(added) == 1
    assert to_train(repo, *ALL_TRIGGERS, "--config", "scale=smoke") == added


def test_dvc_exp_run_keeps_every_finished_run_and_trains_only_a_new_seed(smoke_grid, tmp_path):
    """Issue 23: with no dvc.lock, `dvc exp run -S scale=smoke` deleted results/runs/ (DVC
    checks out every stage's outputs before an experiment; an output with no hash in dvc.lock is
    checked out as nothing). The run folders are `cache: false` outputs now: never checked out."""
    repo = copy_of(smoke_grid, tmp_path / "repo")
    assert not (repo / "dvc.lock").exists()
    before = metrics_files(repo)
    jobs_before = set(files_under(repo / "results" / "jobs"))
    sh(["dvc", "exp", "run", "-S", "scale=smoke"], repo, timeout=1800)
    assert metrics_files(repo) == before  # byte for byte, untouched
    assert set(files_under(repo / "results" / "jobs")) == jobs_before  # no train job ran

    git_commit(repo, "the smoke grid under DVC")
    sh(["dvc", "exp", "run", "-S", "+smoke.studies.nf_final.n_seeds=3"], repo, timeout=1800)
    after = metrics_files(repo)
    assert {k: v for k, v in after.items() if k in before} == before
    new = {str(Path(k).parent.name) for k in set(after) - set(before)}
    (cfg,) = [c for c in grid.load(repo / "params.yaml")[1]["nf_final"] if c["seed"] == 2]
    assert new == {cfg["run_id"]}
    assert (
        json.loads(after[f"{cfg['grid']}/nf_final/{cfg['run_id']}/metrics.json"][0])["status"]
        in runs.FINISHED
    )


def test_scales_live_apart_so_switching_back_trains_nothing(smoke_grid, tmp_path):
    """smoke -> laptop -> smoke: the laptop runs land in their own folders, and the second smoke
    trains nothing. The laptop preset is cut to one tiny synthetic run for the test."""
    repo = copy_of(smoke_grid, tmp_path / "repo")
    tiny = {"name": "synthetic", "train_subset": 64, "val_size": 16, "test_subset": 32}

    def tiny_laptop(p):
        p["laptop"]["data"] = {**tiny, "image_size": 16}
        p["laptop"]["epochs"] = 1
        p["laptop"]["n_seeds"] = 1
        p["laptop"]["studies"]["batch_sweep"].update(
            variants=[{"model": "resnet20", "norm": "bn"}], batch_sizes=[16]
        )

    edit_params(repo, tiny_laptop)
    before = metrics_files(repo)
    sh([SNAKEMAKE, "--cores", "2", "--config", "scale=laptop"], repo)
    laptop = [r for r in metrics_files(repo) if r not in before]
    assert len(laptop) == 1 and laptop[0].startswith("laptop-synthetic-")
    assert {k: v for k, v in metrics_files(repo).items() if k in before} == before
    assert "(scale laptop): the last grid run here" in sh(["make", "status"], repo).stdout

    again = sh([SNAKEMAKE, "--cores", "2", "--config", "scale=smoke"], repo)
    assert "rule train:" not in again.stdout + again.stderr
    assert {k: v for k, v in metrics_files(repo).items() if k in before} == before
    assert "(scale smoke): the last grid run here" in sh(["make", "status"], repo).stdout
