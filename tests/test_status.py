"""`make status` and `make report` while a real smoke grid runs (src/status.py, report --interim).

One Snakemake smoke grid (trimmed to two studies: 12 runs, two of which diverge) runs in a
temporary copy of the project. Once about half its runs have finished, `make status` and
`make report` are run beside it; their counts are checked against the run folders and the live
trainer processes read here independently, and the report is opened in headless Chromium. Then
the grid is left to finish, and the ETA printed earlier is compared with the measured rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from normrepro import config, gpu_slots, grid, status
from normrepro import runs as run_folder  # `runs` names the planned runs here

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")
KEEP = ("batch_sweep", "nf_grid")  # 8 ResNet-8 runs at batch 8 and 64, 4 NF-ResNet runs
COUNTS = ("planned", "ok", "running", "diverged", "failed", "missing", "stale", "unreadable")


def copy_project(dest: Path) -> None:
    shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", "results", ".snakemake", "reports", "data", ".git", ".make", "__pycache__",
        "*.egg-info", ".dvc", "benchmarks"))  # fmt: skip
    (dest / ".venv").symlink_to(VENV)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["scale"] = "smoke"
    trims = params["smoke"]["studies"]
    for name in params["studies"]:
        if name not in KEEP:
            trims[name] = {**trims.get(name, {}), "enabled": False}
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def trainers(work: Path) -> dict[int, set[str]]:
    """Live src/train.py processes of this copy (read from /proc, not via src/runs.py):
    pid -> the run folders it trains (a seed pack has one --out per run)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or os.readlink(proc / "cwd") != str(work):
                continue
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if any(a.endswith("src/train.py") for a in argv):
            found[int(proc.name)] = {
                Path(argv[i + 1]).name for i, a in enumerate(argv[:-1]) if a == "--out"
            }
    return found


def snapshot(work: Path, runs: list[dict]) -> dict:
    """What the run folders and the process table say now: metrics.json statuses, and the runs
    of live train.py processes of this copy."""
    finished = {}
    for cfg in runs:
        try:
            m = json.loads((run_dir(work, cfg) / "metrics.json").read_text())
            finished[cfg["run_id"]] = m["status"]
        except (OSError, ValueError):
            pass
    return {"finished": finished, "live": set().union(*trainers(work).values())}


def signal_all(pids, sig) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def run_dir(work: Path, cfg: dict) -> Path:
    return run_folder.run_dir(work / "results", cfg)


def total_row(text: str) -> dict:
    line = next(ln for ln in text.splitlines() if ln.startswith("total "))
    return dict(zip(COUNTS, map(int, line.split()[1 : 1 + len(COUNTS)]), strict=True))


@pytest.fixture(scope="module")
def half_grid(tmp_path_factory):
    """Runs the grid; yields when about half of it has finished (with a run in progress),
    with what `make status` / `make report` printed then; finishes the grid on teardown."""
    if not FMNIST.is_dir():
        pytest.skip(f"{FMNIST} missing: apt-get install dataset-fashion-mnist (CI installs it)")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = tmp_path_factory.mktemp("status") / "repo"
    copy_project(work)
    params, planned = grid.load(work / "params.yaml")
    runs = [r for cfgs in planned.values() for r in cfgs]
    assert len(runs) == 12 and {r["study"] for r in runs} == set(KEEP)
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    log = open(work / "grid.log", "w")  # noqa: SIM115 (closed on teardown)
    proc = subprocess.Popen([str(VENV / "bin/snakemake"), "train_all", "--cores", "2"],
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    half_way = False
    frozen: list[int] = []
    try:
        deadline = time.monotonic() + 900
        # Smoke runs last seconds, so a run caught "in progress" could finish before `make status`
        # has started. Once half the grid has finished, the live trainers are paused (SIGSTOP: the
        # process, and the flock it holds, stay alive) while status and the interim report are
        # taken, and resumed after; the pause is kept only if a paused run has an epoch done.
        while True:
            assert proc.poll() is None, (work / "grid.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the smoke grid did not get half way in 15 min"
            if len(snapshot(work, runs)["finished"]) >= len(runs) // 2:
                frozen = list(trainers(work))
                signal_all(frozen, signal.SIGSTOP)
                snap = snapshot(work, runs)
                rows = [
                    (run_dir(work, r) / "history.tsv")
                    for r in runs
                    if r["run_id"] in snap["live"] and r["run_id"] not in snap["finished"]
                ]
                if any(p.is_file() and len(p.read_text().splitlines()) > 1 for p in rows):
                    break
                signal_all(frozen, signal.SIGCONT)
                frozen = []
            time.sleep(0.5)
        before = snapshot(work, runs)
        t_status = time.time()
        make = subprocess.run(["make", "status"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        st = status.grid_status(params, work / "results")
        after = snapshot(work, runs)
        rep_before = snapshot(work, runs)
        rep = subprocess.run(["make", "report"], cwd=work, env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        signal_all(frozen, signal.SIGCONT)
        # the ETA is compared with the grid's rest after `make status`, less the pause
        t_resume, frozen = time.time(), []
        half_way = True
        yield {
            "work": work, "runs": runs, "before": before, "after": after, "make": make,
            "status": st, "t_status": t_status, "report": rep, "rep_before": rep_before,
            "proc": proc, "paused_s": t_resume - t_status,
        }  # fmt: skip
    finally:  # let a grid that got half way finish; stop any other, with its jobs
        signal_all(frozen, signal.SIGCONT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=900 if half_way else 0.1)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_make_status_counts_the_half_finished_grid(half_grid):
    g = half_grid
    assert g["make"].returncode == 0, g["make"].stderr
    text = g["make"].stdout
    total = total_row(text)
    before, after = g["before"], g["after"]
    assert total["planned"] == len(g["runs"]) == sum(total[c] for c in COUNTS[1:])
    for s in ("ok", "diverged"):  # between what the folders said just before and just after
        n_before = sum(v == s for v in before["finished"].values())
        n_after = sum(v == s for v in after["finished"].values())
        assert n_before <= total[s] <= n_after, (s, n_before, total[s], n_after)
    assert total["ok"] + total["diverged"] < len(g["runs"])  # caught half way
    # every run `make status` calls running had a live trainer process just before or after
    running = re.findall(r"^  \w+/(\S+): epoch (\d+)/(\d+) done", text, re.M)
    assert len(running) == total["running"] >= 1
    for run_id, done, epochs in running:
        assert run_id in before["live"] | after["live"], run_id
        assert 0 <= int(done) < int(epochs)
    assert total["failed"] == total["stale"] == total["unreadable"] == 0
    assert re.search(r"^ETA: \d", text, re.M), text


@pytest.mark.slow
def test_interim_report_opens_in_chromium_with_banner_and_running_runs(half_grid):
    from test_report_browser import CHROMIUM, DevTools

    g = half_grid
    assert g["report"].returncode == 0, g["report"].stderr
    work = g["work"]
    page = work / "reports" / "index.html"
    html = page.read_text()
    assert "Interim report" in html
    # the grid's own aggregates were neither read nor written
    assert not (work / "results" / "summaries").exists()
    assert not (work / "results" / "metrics").exists()
    listed = re.findall(
        r"<tr><td><code>(\w+)/(\S+)</code></td><td class=\"num\">(\d+)/(\d+)<", html
    )
    assert listed, "no running run listed"
    for _study, run_id, done, epochs in listed:  # unfinished when the report started
        assert run_id not in g["rep_before"]["finished"], run_id
        assert int(done) < int(epochs)
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it)")
    browser = DevTools(work / "chromium-profile")
    try:
        session = browser.open(page.as_uri())
        banner = browser.evaluate("document.querySelector('#interim').innerText", session)
        n_rows = browser.evaluate(
            "document.querySelectorAll('#interim table.running tbody tr').length", session
        )
        sections = browser.evaluate("document.querySelectorAll('section.study').length", session)
        assert browser.errors() == []
    finally:
        browser.close()
    assert "Interim report" in banner and "Running now" in banner
    assert n_rows == len(listed)
    assert sections == len(KEEP)


@pytest.mark.slow
def test_eta_within_two_times_the_measured_rest(half_grid):
    g = half_grid
    assert g["proc"].wait(timeout=900) == 0, (g["work"] / "grid.log").read_text()[-3000:]
    ends = [(run_dir(g["work"], r) / "metrics.json").stat().st_mtime for r in g["runs"]]
    rest = max(ends) - g["t_status"] - g["paused_s"]
    eta = g["status"]["eta_s"]
    assert eta is not None and rest > 0
    print(
        f"ETA {eta:.1f} s, measured rest {rest:.1f} s (paused {g['paused_s']:.1f} s before it),"
        f" ratio {eta / rest:.2f}"
    )
    assert 0.5 <= eta / rest <= 2.0, (eta, rest)
    # and once done: every run finished, nothing running, ETA done
    done = subprocess.run(["make", "status"], cwd=g["work"], capture_output=True, text=True,
                          timeout=60).stdout  # fmt: skip
    total = total_row(done)
    assert total["ok"] + total["diverged"] == total["planned"] == len(g["runs"])
    assert total["diverged"] == 2  # nf_grid's lr 10 runs (params.yaml smoke trims)
    assert "ETA: done" in done


# ---------------------------------------------------------------------------- the ETA model


def write_run(rdir: Path, seconds: list[float], started: float | None, ended: float | None,
              cfg: dict) -> None:  # fmt: skip
    rdir.mkdir(parents=True, exist_ok=True)
    head = "epoch\tlr\ttrain_loss\ttrain_acc\tval_loss\tval_acc\ttest_loss\ttest_acc\tseconds"
    rows = [f"{i}\t0.1\t1.5\t0.4\t1.6\t0.375\tnan\tnan\t{s}" for i, s in enumerate(seconds, 1)]
    (rdir / "history.tsv").write_text("\n".join([head, *rows]) + "\n")
    (rdir / "train.log").write_text("epoch ...\n")
    if started is not None:
        (rdir / run_folder.LOCK_NAME).write_text(json.dumps({"pid": 1, "started": started}))
    if ended is not None:
        m = {"status": "ok", "config_hash": cfg["config_hash"], "test_acc": 0.5, "val_acc": 0.5,
             "best_val_acc": 0.5, "wall_s": ended - started}  # fmt: skip
        (rdir / "metrics.json").write_text(json.dumps(m))
        os.utime(rdir / "metrics.json", (ended, ended))


def test_eta_from_measured_epochs_startup_and_jobs_side_by_side(tmp_path):
    trims = {n: {"enabled": False} for n in config.load_params()["studies"] if n != "batch_sweep"}
    # every run a job of its own (pack off): the seed-pack case is the next test's
    overrides = {"scale": "smoke", "smoke": {"studies": trims, "runtime": {"pack": "off"}}}
    params = config.load_params(overrides=overrides)
    runs = {
        (r["norm"], r["batch_size"], r["seed"]): r for r in grid.study_runs(params, "batch_sweep")
    }
    assert len(runs) == 8 and {k[1] for k in runs} == {8, 64}  # bn / gn x batch 8 / 64 x 2 seeds
    now = time.time()
    res = tmp_path / "results"
    a, b, d = runs[("bn", 8, 0)], runs[("bn", 8, 1)], runs[("gn", 8, 0)]
    # A: ok, 3 epochs of 10 s, alive [now-100, now-60]: start-up 40 - 30 = 10 s
    write_run(run_folder.run_dir(res, a), [10.0] * 3, now - 100, now - 60, a)
    # D: ok, 3 epochs of 20 s, alive [now-90, now-20]: start-up 70 - 60 = 10 s
    write_run(run_folder.run_dir(res, d), [20.0] * 3, now - 90, now - 20, d)
    # B: running (its lock held here), 1 epoch of 12 s done 5 s ago, alive since now-30
    b_dir = run_folder.run_dir(res, b)
    write_run(b_dir, [12.0], None, None, b)
    os.utime(b_dir / "history.tsv", (now - 5, now - 5))
    with run_folder.hold(b_dir):
        (b_dir / run_folder.LOCK_NAME).write_text(json.dumps({"pid": 7, "started": now - 30}))
        st = status.grid_status(params, res, now=now)
        view = status.interim_view(st)
    t = st["total"]
    assert (t["planned"], t["ok"], t["running"], t["missing"]) == (8, 2, 1, 5)
    # left, in single-job seconds (epochs: 3):
    #   B: its own 12 s/epoch: 2 epochs x 12 - the 5 s since its last epoch ended   = 19
    #   gn/bs8 seed 1: its cell (D) 20 s/epoch: 10 start-up + 3 x 20              = 70
    #   4 runs at batch 64: nothing like them measured but the model: median(10, 12, 20) = 12
    #                       s/epoch: 4 x (10 + 3 x 12)                            = 184
    assert st["startup_s"] == pytest.approx(10.0)
    assert t["work_left_s"] == pytest.approx(19 + 70 + 184)
    # jobs side by side: alive seconds since the first start (40 + 70 + 30) over 100 s
    assert st["parallel"] == pytest.approx(1.4)
    assert st["eta_s"] == pytest.approx((19 + 70 + 184) / 1.4)
    assert st["elapsed_s"] == pytest.approx(100.0)
    assert t["wall_s"] == pytest.approx(40 + 70 + 30)
    assert [r["run_id"] for r in st["running"]] == [b["run_id"]]
    assert view["finished"] == "2 of 8"
    assert view["running"] == [{"run": f"batch_sweep/{b['run_id']}", "epoch": "1/3",
                                "train_loss": "1.5000", "val_acc": "37.50", "test_acc": "—",
                                "running_for": "30 s"}]  # fmt: skip
    # the lock released: B reads as failed (resumable from its epoch), and is costed so
    st = status.grid_status(params, res, now=now)
    assert (st["total"]["running"], st["total"]["failed"]) == (0, 1)
    assert st["total"]["work_left_s"] == pytest.approx(10 + 2 * 12 + 70 + 184)


def test_eta_counts_a_seed_pack_as_one_job(tmp_path, monkeypatch):
    """The runs of a pack train in one process: they cost one job's time, not one each, and
    occupy one job slot; runs not started yet are costed as the pack plan groups them."""
    monkeypatch.setattr(gpu_slots, "usable_gpus", lambda: [])  # runtime.pack auto: CPU policy
    # A measured CPU policy (pack_policy): K = 2 pays at batch 8 (1.3x), not at 64 (0.8x).
    policy = tmp_path / "pack_policy.json"
    ratio = {"norm": "bn", "low": 0, "high": 0, "rounds": 1, "k": 2}
    policy.write_text(json.dumps({"devices": {"cpu": {"ratios": [
        {**ratio, "batch": 8, "median": 1.3}, {**ratio, "batch": 64, "median": 0.8}]}}}))  # fmt: skip
    monkeypatch.setenv("NORMREPRO_PACK_POLICY", str(policy))
    trims = {n: {"enabled": False} for n in config.load_params()["studies"] if n != "batch_sweep"}
    overrides = {"scale": "smoke", "smoke": {"studies": trims, "runtime": {"pack": "auto"}}}
    params = config.load_params(overrides=overrides)
    assert params["runtime"]["pack"] == "auto"
    assert grid.pack_size("auto", 8, "cpu") == 2 and grid.pack_size("auto", 64, "cpu") == 1
    runs = {
        (r["norm"], r["batch_size"], r["seed"]): r for r in grid.study_runs(params, "batch_sweep")
    }
    now = time.time()
    res = tmp_path / "results"
    # bn/bs64 seed 0: ok, alone, 3 epochs of 4 s, alive [now-100, now-80]: start-up 20 - 12 = 8
    e = runs[("bn", 64, 0)]
    write_run(run_folder.run_dir(res, e), [4.0] * 3, now - 100, now - 80, e)
    # bn/bs8 seeds 0 and 1: one pack process alive since now-30, 1 epoch of 12 s done 5 s ago
    pack_dirs = [run_folder.run_dir(res, runs[("bn", 8, s)]) for s in (0, 1)]
    for s, rdir in zip((0, 1), pack_dirs, strict=True):
        write_run(rdir, [12.0], None, None, runs[("bn", 8, s)])
        os.utime(rdir / "history.tsv", (now - 5, now - 5))
    with run_folder.hold(*pack_dirs):
        for rdir in pack_dirs:
            (rdir / run_folder.LOCK_NAME).write_text(json.dumps({"pid": 7, "started": now - 30}))
        st = status.grid_status(params, res, now=now)
    t = st["total"]
    assert (t["planned"], t["ok"], t["running"], t["missing"]) == (8, 1, 2, 5)
    # single-job seconds left (3 epochs a run):
    #   the running bn/bs8 pack: 2 epochs x 12 - 5 s into the next                 = 19
    #   gn/bs8 seeds 0 + 1, one pack (batch 8 <= auto's max): its shape's 12 s/epoch,
    #                       8 start-up + 3 x 12                                    = 44
    #   bn/bs64 seed 1: its cell's 4 s/epoch: 8 + 3 x 4                            = 20
    #   gn/bs64 seeds 0, 1: two jobs (no packing at batch 64), the shape's 4 s     = 40
    assert st["startup_s"] == pytest.approx(8.0)
    assert t["work_left_s"] == pytest.approx(19 + 44 + 20 + 40)
    # side by side: one live job (the pack), alive time (20 + 30) / 100 s < 1
    assert st["parallel"] == pytest.approx(1.0)
    assert st["eta_s"] == pytest.approx(123.0)
