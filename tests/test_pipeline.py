"""End to end: the smoke grid through Snakemake, then through DVC, in a temporary git repo.

What a user does: `snakemake --cores 2 --config scale=smoke`, then `dvc repro` / `dvc exp run -S`.
Checked against the grid's own run list and the files on disk, not against the code's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_of, git_commit
from test_report_browser import CHROMIUM, DevTools, assert_renders_cleanly, survivorship_marks

from normrepro import claims, config, grid
from normrepro.runs import grid_name, run_dir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def sh(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def smoke_repo(smoke_grid, tmp_path_factory) -> Path:
    """A git + DVC repo holding the project, after one smoke grid run through Snakemake: a copy
    of the session's smoke grid (conftest.py), with params.yaml at `scale: smoke` (what
    `dvc exp run -S scale=smoke` writes; the same grid) committed."""
    repo = copy_of(smoke_grid, tmp_path_factory.mktemp("pipeline") / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["scale"] = "smoke"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_commit(repo, "scale: smoke")
    return repo


def summaries(repo: Path) -> Path:
    """The smoke grid's aggregates: results/summaries/<grid>/."""
    return repo / "results" / "summaries" / grid_name(config.load_params(repo / "params.yaml"))


def planned(repo: Path) -> dict[str, list[dict]]:
    params = config.load_params(repo / "params.yaml")
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
        summary = json.loads((summaries(smoke_repo) / study / "summary.json").read_text())
        assert summary["n_runs"] == len(cfgs)
        assert summary["n_missing"] == summary["n_failed"] == summary["n_stale"] == 0
        for cfg in cfgs:
            families.add(cfg["model"])
            metrics = json.loads(
                (run_dir(smoke_repo / "results", cfg) / "metrics.json").read_text()
            )
            assert metrics["config_hash"] == cfg["config_hash"]
            assert metrics["status"] in ("ok", "diverged")
            history = (run_dir(smoke_repo / "results", cfg) / "history.tsv").read_text()
            assert len(history.strip().splitlines()) == 1 + metrics["epochs_done"]
    # Every CIFAR model family of the seeds runs at the smoke scale.
    assert {"resnet20", "resnet164", "preact_resnet164", "wrn28_10", "nf_resnet"} <= families
    # The smoke preset's lr = 10 NF-ResNet cell diverges, and is counted, not averaged.
    nf = json.loads((summaries(smoke_repo) / "nf_grid" / "summary.json").read_text())
    assert nf["n_diverged"] == len([c for c in runs["nf_grid"] if c["lr"] == 10.0])
    html = (smoke_repo / "reports/index.html").read_text()
    for study in runs:
        assert f'id="{study}"' in html, study
    assert "diverged" in html
    # A second invocation has nothing to do.
    dry = sh(["snakemake", "-n", "--cores", "2", "--config", "scale=smoke"], smoke_repo)
    assert "Nothing to be done" in dry.stdout + dry.stderr


# The ledger's keys every claim carries (DESIGN.md "Contracts": results/claims.json).
CLAIM_KEYS = {"id", "study", "source", "statement", "test", "effect", "ci_low", "ci_high"}
CLAIM_KEYS |= {"margin", "p", "p_holm", "n_a", "n_b", "runs_a", "runs_b", "verdict"}
CLAIM_KEYS |= {"verdict_itt", "seeds_to_resolve"}


def test_smoke_claims_json_lists_every_claim_of_every_enabled_study(smoke_repo):
    ledger = json.loads((smoke_repo / "results/claims.json").read_text())["claims"]
    metas = grid.studies(config.load_params(smoke_repo / "params.yaml"))
    want = {(s, c.id) for s, meta in metas.items() for c in claims.kind_claims(meta["kind"])}
    assert {(e["study"], e["claim"]) for e in ledger} == want
    runs = {f"{s}/{c['run_id']}" for s, cfgs in planned(smoke_repo).items() for c in cfgs}
    for e in ledger:
        assert set(e) >= CLAIM_KEYS, e["id"]
        assert e["verdict"] in ("reproduced", "contradicted", "inconclusive", "not run")
        assert set(e["runs_a"]) | set(e["runs_b"]) <= runs  # the grid's own runs, by id
        assert len(e["runs_a"]) == e["n_a"] and len(e["runs_b"]) == e["n_b"]
    # The smoke NF grid's lr-10 cell diverges in both seeds: no survivor to compare lr 0.01
    # with, but intent-to-treat tests both seeds of both cells (lr 10 at chance): marked.
    (lr10,) = [e for e in ledger if e["id"] == "nf_grid/lr0p01_best/bs32/lr10"]
    assert lr10["verdict"] == "not run" and lr10["verdict_itt"] != "not run"
    assert (lr10["n_a_itt"], lr10["n_b_itt"], lr10["survivorship"]) == (2, 2, True)


# Vertical positions of the Claims section and of every study section, as Chromium laid them out.
SECTIONS = """JSON.stringify({
  claims: (document.querySelector('section#claims') || {getBoundingClientRect: () => null})
          .getBoundingClientRect(),
  rows: document.querySelectorAll('section#claims table.claims tbody tr').length,
  studies: [...document.querySelectorAll('section.study')].map(s => s.getBoundingClientRect().top),
})"""


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
        # The Claims section comes first, above every study, one row per claim of the ledger.
        laid_out = json.loads(browser.evaluate(SECTIONS, session))
        ledger = json.loads((smoke_repo / "results/claims.json").read_text())["claims"]
        assert laid_out["claims"] and laid_out["claims"]["height"] > 0
        assert laid_out["studies"] and laid_out["claims"]["bottom"] <= min(laid_out["studies"])
        assert laid_out["rows"] == len(ledger)
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
    assert studies == set(planned(smoke_repo)) | {"claims"}  # results/claims.json: the ledger
    ledger = json.loads((smoke_repo / "results/claims.json").read_text())
    assert files["results/claims.json"]["data"]["verdicts"] == ledger["verdicts"]

    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], smoke_repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke"], smoke_repo)
    before = {p: p.stat().st_mtime_ns for p in (smoke_repo / "results/runs").rglob("metrics.json")}
    sh(["dvc", "exp", "run", "-S", "smoke.studies.nf_final.epochs=5"], smoke_repo, timeout=1200)
    changed = {p for p, t in before.items() if p.stat().st_mtime_ns != t}
    assert {p.parent.name for p in changed} == {
        c["run_id"] for c in planned(smoke_repo)["nf_final"]
    }
    for cfg in planned(smoke_repo)["nf_final"]:
        metrics = json.loads((run_dir(smoke_repo / "results", cfg) / "metrics.json").read_text())
        assert metrics["epochs_done"] == 5
    diff = sh(["dvc", "params", "diff", "--json"], smoke_repo).stdout
    assert "smoke.studies.nf_final.epochs" in diff
    metrics_diff = json.loads(sh(["dvc", "metrics", "diff", "--json"], smoke_repo).stdout)
    changed_files = {Path(p).stem for p in metrics_diff}
    assert "nf_final" in changed_files and "wrn_table" not in changed_files
    assert json.loads(sh(["dvc", "status", "--json"], smoke_repo).stdout or "{}") == {}
