"""End to end: the smoke grid through Snakemake, then through DVC, in a temporary git repo.

What a user does: `snakemake --cores 2 --config scale=smoke`, then `dvc repro` / `dvc exp run -S`.
Checked against the grid's own run list and the files on disk, not against the code's output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_report_browser import CHROMIUM, DevTools, assert_renders_cleanly, survivorship_marks

from normrepro import grid

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def sh(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> Path:
    """A git + DVC repo holding the project, after one smoke grid run through Snakemake."""
    if not FMNIST.is_dir():
        pytest.skip(f"{FMNIST} missing: apt-get install dataset-fashion-mnist (CI installs it)")
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    for name in ("Snakefile", "params.yaml", "dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    # profiles/: the link to workflow/profiles through which `snakemake` in the repository root
    # loads the default profile (rerun-triggers mtime: a seed pack's runs, planned as a pack and
    # finished, are not retrained because their rule's name changed).
    for name in ("src", "workflow", ".dvc", "profiles"):
        shutil.copytree(
            ROOT / name,
            repo / name,
            ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp", "config.local"),
        )
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["scale"] = "smoke"  # what `dvc exp run -S scale=smoke` writes
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)
    sh(["snakemake", "--cores", "2", "--config", "scale=smoke"], repo, timeout=1200)
    return repo


def planned(repo: Path) -> dict[str, list[dict]]:
    params = grid.load_params(repo / "params.yaml")
    return {name: grid.study_runs(params, name) for name in grid.studies(params)}


def test_snakemake_smoke_produces_every_run_summary_and_the_report(smoke_repo):
    runs = planned(smoke_repo)
    assert set(runs) == {
        n
        for n, s in yaml.safe_load((ROOT / "params.yaml").read_text())["studies"].items()
        if s.get("enabled", True)
    }
    families = set()
    for study, cfgs in runs.items():
        summary = json.loads((smoke_repo / f"results/summaries/{study}/summary.json").read_text())
        assert summary["n_runs"] == len(cfgs)
        assert summary["n_missing"] == summary["n_failed"] == summary["n_stale"] == 0
        for cfg in cfgs:
            families.add(cfg["model"])
            metrics = json.loads(
                (grid.run_dir(smoke_repo / "results", cfg) / "metrics.json").read_text()
            )
            assert metrics["config_hash"] == cfg["config_hash"]
            assert metrics["status"] in ("ok", "diverged")
            history = (grid.run_dir(smoke_repo / "results", cfg) / "history.tsv").read_text()
            assert len(history.strip().splitlines()) == 1 + metrics["epochs_done"]
    # Every CIFAR model family of the seeds runs at the smoke scale.
    assert {"resnet20", "resnet164", "preact_resnet164", "wrn28_10", "nf_resnet"} <= families
    # The smoke preset's lr = 10 NF-ResNet cell diverges, and is counted, not averaged.
    nf = json.loads((smoke_repo / "results/summaries/nf_grid/summary.json").read_text())
    assert nf["n_diverged"] == len([c for c in runs["nf_grid"] if c["lr"] == 10.0])
    html = (smoke_repo / "reports/index.html").read_text()
    for study in runs:
        assert f'id="{study}"' in html, study
    assert "diverged" in html
    # A second invocation has nothing to do.
    dry = sh(["snakemake", "-n", "--cores", "2", "--config", "scale=smoke"], smoke_repo)
    assert "Nothing to be done" in dry.stdout + dry.stderr


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it)")
def test_the_smoke_report_opens_in_a_browser(smoke_repo, tmp_path):
    browser = DevTools(tmp_path / "chromium-profile")
    try:
        page = smoke_repo / "reports" / "index.html"
        assert_renders_cleanly(browser, page, len(planned(smoke_repo)), tmp_path / "smoke.png")
        # The smoke NF grid's lr-10 cell diverges in both seeds: its point says so in the figure.
        session = browser.open(page.as_uri())
        marks = [m["text"] for m in survivorship_marks(browser, session, "nf_grid")]
        assert marks == ["0/2, 2 div."]
    finally:
        browser.close()


def test_dvc_repro_then_exp_run_reruns_only_what_a_param_touches(smoke_repo):
    (smoke_repo / "reports" / "index.html").unlink()
    sh(["dvc", "repro"], smoke_repo, timeout=1200)
    assert "nf_grid" in (smoke_repo / "reports" / "index.html").read_text()  # DVC made it anew
    status = sh(["dvc", "status", "--json"], smoke_repo)
    assert json.loads(status.stdout or "{}") == {}
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], smoke_repo).stdout)
    files = next(iter(shown.values()))["data"]
    studies = {Path(p).stem for p in files}
    assert studies == set(planned(smoke_repo))

    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], smoke_repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke"], smoke_repo)
    before = {p: p.stat().st_mtime_ns for p in (smoke_repo / "results/runs").rglob("metrics.json")}
    sh(["dvc", "exp", "run", "-S", "smoke.studies.nf_final.epochs=5"], smoke_repo, timeout=1200)
    changed = {p for p, t in before.items() if p.stat().st_mtime_ns != t}
    assert {p.parent.name for p in changed} == {
        c["run_id"] for c in planned(smoke_repo)["nf_final"]
    }
    for cfg in planned(smoke_repo)["nf_final"]:
        metrics = json.loads(
            (grid.run_dir(smoke_repo / "results", cfg) / "metrics.json").read_text()
        )
        assert metrics["epochs_done"] == 5
    diff = sh(["dvc", "params", "diff", "--json"], smoke_repo).stdout
    assert "smoke.studies.nf_final.epochs" in diff
    metrics_diff = json.loads(sh(["dvc", "metrics", "diff", "--json"], smoke_repo).stdout)
    changed_files = {Path(p).stem for p in metrics_diff}
    assert "nf_final" in changed_files and "wrn_table" not in changed_files
    assert json.loads(sh(["dvc", "status", "--json"], smoke_repo).stdout or "{}") == {}
