"""The grid's exit status (src/normrepro/exit_status.py), on the real `snakemake` in a copy of the
repository: one run that crashes at run time (image files that do not decode) leaves every other
run, the summaries and the report made, and the command exits 1, its last lines naming the run
and its log; one study (`--config only=`) is judged by its own runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_preflight import folder_study, image_tree, make_params, make_repo, plan, snakemake


@pytest.mark.slow
def test_a_grid_with_one_failing_run_exits_1_after_everything_else(tmp_path):
    params = make_params(n_seeds=2)
    image_tree(tmp_path / "repo-images", {"cat": 2}, {"cat": 1})  # files that do not decode
    params["studies"]["broken"] = {
        **params["studies"]["tiny"],
        "n_seeds": 1,
        "batch_sizes": [2],
        **folder_study(Path("images")),
    }
    repo = make_repo(tmp_path, params)
    shutil.move(tmp_path / "repo-images", repo / "images")
    proc = snakemake(repo, "--cores", "2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    metrics = {p.parent.name: json.loads(p.read_text()) for p in repo.rglob("metrics.json")}
    runs = {r["run_id"]: r["study"] for rs in plan(params)[1].values() for r in rs}
    assert set(metrics) == set(runs) and len(runs) == 3
    for run_id, m in metrics.items():
        assert m["status"] == ("failed" if runs[run_id] == "broken" else "ok"), run_id
    assert (repo / "reports" / "index.html").is_file()  # the report was built, then exit 1
    (broken,) = [r for r, s in runs.items() if s == "broken"]
    log = metrics[broken]["log_path"]
    assert (repo / log).is_file() and "cannot decode" in (repo / log).read_text()
    last = out.strip().splitlines()[-3:]
    assert last[0] == "1 of 3 runs did not finish (every other job of this command did):"
    assert last[1].endswith(f"{broken}: failed; log: {log}")
    # One study (README "Run one study"): its runs all finished, so the command succeeds and
    # leaves the report alone; a name that is no study is refused with the list.
    report = (repo / "reports" / "index.html").stat().st_mtime_ns
    proc = snakemake(repo, "--cores", "2", "--config", "only=tiny")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (repo / "reports" / "index.html").stat().st_mtime_ns == report
    proc = snakemake(repo, "--cores", "2", "--config", "only=tiny_typo")
    assert proc.returncode == 1
    assert (
        "--config only: got 'tiny_typo'; allowed: a study enabled at this scale: tiny, broken"
        in proc.stderr
    )
    (tiny,) = [p.relative_to(repo) for p in repo.rglob("summary.json") if p.parent.name == "tiny"]
    proc = snakemake(repo, "--cores", "2", str(tiny))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
