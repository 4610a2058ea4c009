"""Faults at the grid level (issue 7): nothing lost, nothing half-written, nothing silently stale.

Grid tests build a copy of the repository (Snakefile, src/, workflow/, profiles/ when present)
with a params.yaml of their own: tiny ResNets (depth 8, width 4) on synthetic data, a few
seconds a run, and run the everyday command (`snakemake --cores N`) in it, killing it or
editing params.yaml on the way (marked slow). Trainer faults (torn checkpoints, lost metrics)
run src/train.py in-process. Write failures are simulated in-process: the tests run as root,
where chmod does not stop a write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from normrepro import aggregate, config, grid, io_utils, record_failure, report, runs, train

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
TINY = {"model": "resnet20", "norm": "bn", "model_kw": {"depth": 8, "base_width": 4}}
NUMBERS = ("status", "test_acc", "test_loss", "val_acc", "best_val_acc", "best_epoch")
NUMBERS += ("epochs_done", "train_loss", "train_acc", "config_hash")
LOCK_MESSAGE = "Directory cannot be locked"


# ---------------------------------------------------------------------------- helpers


def make_params(epochs: int = 3, n_seeds: int = 2, **study) -> dict:
    """params.yaml (same schema as the real one) with one study `grid` of tiny runs."""
    optim = {"momentum": 0.9, "nesterov": False, "weight_decay": 1e-4, "wd_on_norm": True}
    return {
        "scale": "full",
        "data": {
            "name": "synthetic",
            "root": "data",
            "download": False,
            "val_size": 100,
            "split_seed": 0,
            "train_subset": 400,
            "test_subset": 200,
            "image_size": None,
        },
        "runtime": {
            "bf16": False,
            "compile": False,
            "channels_last": False,
            "deterministic": False,
            "eval_batch_size": 500,
        },
        "recipes": {
            "tiny": {
                "epochs": epochs,
                "lr": 0.05,
                "augment": "standard",
                "normalize": "channel",
                "optim": {**optim, "schedule": "constant"},
            }
        },
        "studies": {
            "grid": {
                "title": "fault tests",
                "kind": "generic",
                "recipe": "tiny",
                "variants": [TINY],
                "batch_sizes": [32],
                "n_seeds": n_seeds,
                **study,
            }
        },
    }


# A study whose runs crash at run time: its imagefolder files are not images. The parse-time
# checks pass (the files are there, enough for a batch of 32); decoding them fails in the job.
BROKEN_DATA = {"name": "imagefolder", "root": "broken-images", "image_size": 32, "val_size": 0}
BROKEN_DATA |= {"train_subset": None, "test_subset": None}


def undecodable_images(repo: Path, n_train: int = 32) -> None:
    for split, n in (("train", n_train), ("test", 1)):
        folder = repo / BROKEN_DATA["root"] / split / "cat"
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i}.png").write_bytes(b"not a png")


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_repo(tmp_path: Path, params: dict) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    if (ROOT / "Snakefile").exists():
        shutil.copy(ROOT / "Snakefile", repo / "Snakefile")
    for name in ("src", "workflow", "profiles"):  # profiles/: where snakemake looks for one
        if (ROOT / name).exists():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / name, repo / name, symlinks=True, ignore=ignore)
    write_params(repo, params)
    return repo


def expand(params: dict) -> list[dict]:
    """Every run config the grid plans from raw params."""
    planned = grid.plan(config.apply_preset(config.check_params(params)))
    return [cfg for cfgs in planned.values() for cfg in cfgs]


def planned_configs(repo: Path) -> list[dict]:
    return expand(yaml.safe_load((repo / "params.yaml").read_text()))


def run_dirs(repo: Path) -> list[Path]:
    return [runs.run_dir(repo / "results", cfg) for cfg in planned_configs(repo)]


def grid_folder(repo: Path) -> str:
    """The grid's folder name under results/<kind>/ (its scale and data)."""
    return runs.grid_name(config.load_params(repo / "params.yaml"))


def job_log(repo: Path, study: str, run_id: str, attempt: int = 0) -> str:
    """The log of a one-run job (runtime.pack off, or auto where nothing is measured), as the
    run's failed metrics.json names it."""
    record = grid.record_path("results", grid_folder(repo), study, run_id, attempt)
    return str(record.with_suffix(".log"))


def snakemake(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [SNAKEMAKE, *args], cwd=repo, env=ENV, capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def start(repo: Path, *args: str) -> subprocess.Popen:
    """snakemake in the background, in its own process group (so the group can be killed)."""
    with open(repo / f"snakemake.{time.monotonic_ns()}.out", "w") as out:
        return subprocess.Popen(
            [SNAKEMAKE, *args],
            cwd=repo,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def output_of(repo: Path) -> str:
    return "".join(p.read_text() for p in sorted(repo.glob("snakemake.*.out")))


def wait_until(condition, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, "snakemake ended before the awaited state"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def planned_train_jobs(repo: Path) -> set[str]:
    """'study/run' of every run `snakemake -n` would train: the runs of each train job it plans
    that have not finished (a job's finished runs are skipped)."""
    out = snakemake(repo, "-n", "--cores", "1").stdout
    params = config.load_params(repo / "params.yaml")
    jobs = {(j.study, j.id): j for cfgs in grid.plan(params).values()
            for j in grid.jobs(cfgs, params["runtime"]["pack"], "cpu")}  # fmt: skip
    return {
        f"{study}/{cfg['run_id']}"
        for study, job in re.findall(r"wildcards: study=(\w+), job=(\S+), attempt=\d+", out)
        for cfg in jobs[(study, job)].runs
        if not runs.finished(runs.run_dir(repo / "results", cfg), cfg["config_hash"])
    }


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def numbers(run_dir: Path) -> dict:
    m = metrics(run_dir)
    return {k: m[k] for k in NUMBERS}


def history(run_dir: Path) -> list[list[str]]:
    """history.tsv rows without the wall-clock `seconds` column (the last one)."""
    return [row.split("\t")[:-1] for row in (run_dir / "history.tsv").read_text().splitlines()]


def starts(log: str) -> int:
    """How many times train.py started training in this run folder (one line per start)."""
    return len(re.findall(r" INFO run \S+ \|", log))


def last_attempt(run_dir: Path) -> str:
    """train.log from the last start of train.py on."""
    log = (run_dir / "train.log").read_text()
    return log[log.rfind(" INFO run ") :]


def summary_numbers(repo: Path, study: str = "grid") -> pd.DataFrame:
    folder = repo / "results" / "summaries" / grid_folder(repo) / study
    return pd.read_csv(folder / "summary.csv").select_dtypes("number")


def runs_table(repo: Path, study: str = "grid") -> pd.DataFrame:
    return pd.read_csv(repo / "results" / "summaries" / grid_folder(repo) / study / "runs.csv")


# ---------------------------------------------------------------------------- the profile


def test_the_default_profile_is_in_effect(tmp_path):
    """keep-going, rerun-incomplete and retries come from workflow/profiles/default:
    `snakemake` run from the repository root must pick it up."""
    repo = make_repo(tmp_path, make_params())
    proc = snakemake(repo, "-n", "--cores", "1")
    assert "Using workflow specific profile" in proc.stdout + proc.stderr, (
        "snakemake does not use workflow/profiles/default from the repository root "
        "(it looks for profiles/default next to the Snakefile)"
    )


# ------------------------------------------------------------------ kills and the lock


class Background:
    """A grid started in the background; `finish()` waits for it and checks it went well."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.proc = start(repo, "--cores", "1")

    def finish(self) -> None:
        assert self.proc.wait(timeout=600) == 0, output_of(self.repo)[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid of the kill test, run once uninterrupted (started at once, in the background)."""
    grid_run = Background(make_repo(tmp_path_factory.mktemp("reference"), make_params(epochs=8)))
    yield grid_run
    kill_group(grid_run.proc)


@pytest.mark.slow
def test_a_second_snakemake_on_the_same_results_is_refused(reference):
    repo = reference.repo
    locks = repo / ".snakemake" / "locks"
    wait_until(lambda: any(locks.glob("*.lock")), reference.proc)
    second = snakemake(repo, "--cores", "1", check=False)
    assert second.returncode != 0
    assert LOCK_MESSAGE in second.stdout + second.stderr
    assert "rule train" not in second.stdout + second.stderr  # it started nothing

    reference.finish()  # the first goes on undisturbed
    for run_dir in run_dirs(repo):
        assert metrics(run_dir)["status"] == "ok"
        assert starts((run_dir / "train.log").read_text()) == 1  # trained once, by the first


@pytest.mark.slow
def test_sigkill_of_snakemake_mid_grid_then_the_same_command_finishes_it(reference, tmp_path):
    repo = make_repo(tmp_path, make_params(epochs=8))
    dirs = run_dirs(repo)

    def cut_off(d: Path) -> bool:  # has a checkpoint, no metrics.json
        started = (d / "checkpoint.pt").exists() or (d / "checkpoint.prev.pt").exists()
        return started and not (d / "metrics.json").exists()

    proc = start(repo, "--cores", "1")
    try:  # kill it once a run is done and the next one is part-trained
        wait_until(
            lambda: any((d / "metrics.json").exists() for d in dirs) and any(map(cut_off, dirs)),
            proc,
        )
    finally:
        kill_group(proc)
    done = {
        d: ((d / "metrics.json").read_bytes(), (d / "metrics.json").stat().st_mtime_ns)
        for d in dirs
        if (d / "metrics.json").exists()
    }
    cut = [d for d in dirs if cut_off(d)]
    assert done and cut
    assert any((repo / ".snakemake" / "locks").glob("*.lock"))  # the kill left a stale lock

    rerun = snakemake(repo, "--cores", "1")  # the same command, no --unlock
    assert "Removed the lock of a snakemake run that was killed" in rerun.stderr
    for d, (data, mtime) in done.items():  # finished runs were not retrained
        assert (d / "metrics.json").read_bytes() == data
        assert (d / "metrics.json").stat().st_mtime_ns == mtime
        assert starts((d / "train.log").read_text()) == 1
    for d in cut:  # cut-off runs resumed from their checkpoint
        log = last_attempt(d)
        found = re.search(r"resuming from checkpoint(\.prev)?\.pt: (\d+) epochs done", log)
        assert found, log
        assert f"epoch {int(found.group(2))}/8 " not in log  # no epoch trained twice
        assert metrics(d)["status"] == "ok"

    reference.finish()
    pd.testing.assert_frame_equal(summary_numbers(repo), summary_numbers(reference.repo))
    for d in dirs:  # and every run equals its uninterrupted twin
        twin = reference.repo / d.relative_to(repo)
        assert numbers(d) == numbers(twin)
        assert history(d) == history(twin)


@pytest.mark.slow
def test_after_a_kill_of_snakemake_alone_the_rerun_waits_for_its_jobs(tmp_path):
    """`kill -9 <snakemake pid>` leaves its jobs running: the rerun must not start a second
    trainer on the same run, and must work once they are gone."""
    repo = make_repo(tmp_path, make_params(epochs=20, n_seeds=1))
    (run_dir,) = run_dirs(repo)
    proc = start(repo, "--cores", "1")
    try:
        wait_until(lambda: (run_dir / "checkpoint.pt").exists(), proc)
        os.kill(proc.pid, signal.SIGKILL)  # snakemake only: train.py goes on, orphaned
        proc.wait()
        refused = snakemake(repo, "--cores", "1", check=False)
        assert refused.returncode != 0
        assert "its jobs are still running" in refused.stderr
        assert "src/train.py" in refused.stderr
        wait_until(lambda: not group_alive(proc.pid), timeout=120)
    finally:
        kill_group(proc)
    trained = numbers(run_dir)  # the orphan finished the run

    snakemake(repo, "--cores", "1")
    assert numbers(run_dir) == trained
    # Not retrained: the orphan's training is the only one (the rerun found the run finished;
    # under the old layout it resumed from the last checkpoint and trained no epoch either).
    assert starts((run_dir / "train.log").read_text()) == 1


# ------------------------------------------------------------ divergence and crashes


@pytest.fixture(scope="module")
def faulty_grid(tmp_path_factory):
    """A grid with a diverging cell (lr 1000) and a study whose runs crash at run time (image
    files that do not decode), run once; and what a second invocation then plans."""
    params = make_params(lrs=[0.05, 1000.0])
    params["studies"]["broken"] = {
        **params["studies"]["grid"],
        "title": "runs that crash",
        "n_seeds": 1,
        "lrs": [0.05],
        "data": BROKEN_DATA,
    }
    repo = make_repo(tmp_path_factory.mktemp("faulty"), params)
    undecodable_images(repo)
    # A crash is recorded and the grid goes on; the command still exits 1 at the end.
    assert snakemake(repo, "--cores", "2", check=False).returncode == 1
    return repo, planned_train_jobs(repo)


def _report(repo: Path) -> str:
    return (repo / "reports" / "index.html").read_text()


def broken_run(repo: Path) -> str:
    (cfg,) = [c for c in planned_configs(repo) if c["study"] == "broken"]
    return f"broken/{cfg['run_id']}"


@pytest.mark.slow
def test_a_diverged_run_is_recorded_reported_and_not_retried(faulty_grid):
    repo, planned = faulty_grid
    runs = runs_table(repo)
    diverged = runs[runs["lr"] == 1000.0]
    assert len(diverged) == 2 and set(diverged["status"]) == {"diverged"}
    assert set(runs.loc[runs["lr"] == 0.05, "status"]) == {"ok"}  # the rest completed
    summary = pd.read_csv(
        repo / "results" / "summaries" / grid_folder(repo) / "grid" / "summary.csv"
    )
    cell = summary[summary["lr"] == 1000.0].iloc[0]
    assert (cell["n_diverged"], cell["n"]) == (2, 0)  # counted, never averaged
    html = _report(repo)
    for run_id in diverged["run_id"]:
        assert run_id in html
    assert not {p for p in planned if p.startswith("grid/")}  # not rerun by the next invocation


@pytest.mark.slow
def test_a_crashed_run_is_listed_as_failed_with_its_log_and_retried(faulty_grid):
    repo, planned = faulty_grid
    name = broken_run(repo)
    run_id = name.split("/")[1]
    log = job_log(repo, "broken", run_id)  # the job's log (results/jobs/<grid>/...)
    assert metrics(repo / "results" / "runs" / grid_folder(repo) / name)["status"] == "failed"
    assert "cannot decode broken-images/train/cat/" in (repo / log).read_text()
    aggregate_out = (
        repo / "results" / "summaries" / grid_folder(repo) / "broken" / "aggregate.log"
    ).read_text()
    assert f"failed: {name} (log: {log})" in aggregate_out
    (row,) = runs_table(repo, "broken").to_dict("records")
    assert (row["status"], row["log_path"]) == ("failed", log)
    html = _report(repo)
    assert run_id in html and log in html
    assert planned == {name}  # the next invocation retries it, and only it


@pytest.mark.slow
def test_a_deleted_or_half_written_metrics_json_is_rerun(faulty_grid):
    repo, _ = faulty_grid
    ok = [d for d in run_dirs(repo) if d.parent.name == "grid" and "lr0.05" in d.name]
    ok[0].joinpath("metrics.json").unlink()  # deleted by hand to redo the run
    text = ok[1].joinpath("metrics.json").read_text()
    ok[1].joinpath("metrics.json").write_text(text[: len(text) // 2])  # not written atomically
    expected = {f"grid/{d.name}" for d in ok} | {broken_run(repo)}  # (still failed)
    assert planned_train_jobs(repo) == expected


# ------------------------------------------------------------- params.yaml edited mid-grid


@pytest.mark.slow
def test_params_edited_while_the_grid_runs(tmp_path):
    params = make_params()
    repo = make_repo(tmp_path, params)
    dirs = run_dirs(repo)
    old = {c["run_id"]: c["config_hash"] for c in planned_configs(repo)}

    proc = start(repo, "--cores", "1")
    try:
        wait_until(lambda: any((d / "metrics.json").exists() for d in dirs), proc)
        assert not all((d / "metrics.json").exists() for d in dirs)  # one finished, one to go
        params["recipes"]["tiny"]["lr"] = 0.04  # every run's config changes
        write_params(repo, params)
        assert proc.wait(timeout=600) == 0, output_of(repo)[-3000:]
    finally:
        kill_group(proc)
    new = {c["run_id"]: c["config_hash"] for c in planned_configs(repo)}
    for d in dirs:  # the running grid kept the configs it started with
        assert metrics(d)["config_hash"] == old[d.name] != new[d.name]
    # Its aggregation reads the params that grid planned with (results/params.effective.json),
    # not the edited file: it summarizes exactly the configs it trained, under their own lr.
    assert set(runs_table(repo)["status"]) == {"ok"}
    summary = summary_numbers(repo)
    assert summary["n"].tolist() == [len(dirs)] and summary["lr"].tolist() != [0.04]

    assert planned_train_jobs(repo) == {f"grid/{d.name}" for d in dirs}  # detected as stale
    snakemake(repo, "--cores", "2")
    for d in dirs:
        assert metrics(d)["config_hash"] == new[d.name]
        assert "not resuming from it" in last_attempt(d)  # the old config's checkpoint
    assert set(runs_table(repo)["status"]) == {"ok"}
    summary = summary_numbers(repo)
    assert summary["n"].tolist() == [len(dirs)] and summary["lr"].tolist() == [0.04]


# ------------------------------------------------------------------- trainer-level kills


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # train.py's CPU thread count
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _lose_metrics(d: Path) -> None:
    (d / "metrics.json").unlink()


def _tear_checkpoint(d: Path) -> None:  # a power loss mid-write (a kill cannot: atomic writes)
    _lose_metrics(d)
    data = (d / "checkpoint.pt").read_bytes()
    (d / "checkpoint.pt").write_bytes(data[: len(data) // 2])


def _kill_inside_save_checkpoint(d: Path) -> None:
    # save_checkpoint wrote .checkpoint.pt.new, rotated checkpoint.pt -> .prev, and was killed
    # before renaming .new; the next save's temporary file was cut short too.
    _lose_metrics(d)
    os.replace(d / "checkpoint.pt", d / ".checkpoint.pt.new")
    (d / ".checkpoint.pt.new.x1y2z3.tmp").write_bytes(b"PK\x03\x04 cut short")


def _garble_checkpoints(d: Path) -> None:
    _lose_metrics(d)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (d / name).write_bytes(b"garbage")


def _half_write_metrics(d: Path) -> None:
    text = (d / "metrics.json").read_text()
    (d / "metrics.json").write_text(text[: len(text) // 2])


DAMAGE = {
    "killed between the last checkpoint and metrics.json": (
        _lose_metrics,
        ["resuming from checkpoint.pt: 3 epochs done"],
    ),
    "checkpoint.pt torn": (
        _tear_checkpoint,
        ["checkpoint.pt is unreadable", "resuming from checkpoint.prev.pt: 2 epochs done"],
    ),
    "killed inside save_checkpoint": (
        _kill_inside_save_checkpoint,
        ["resuming from checkpoint.prev.pt: 2 epochs done"],
    ),
    "both checkpoints garbage": (
        _garble_checkpoints,
        ["checkpoint.pt is unreadable", "checkpoint.prev.pt is unreadable", "from scratch"],
    ),
    "metrics.json half-written": (
        _half_write_metrics,
        ["resuming from checkpoint.pt: 3 epochs done"],
    ),
}


def test_no_torn_or_missing_file_of_a_run_is_trusted(tmp_path, one_thread):
    """A finished run, damaged as a kill (or a power loss) could leave it, then trained again:
    train.py never reads a damaged file as valid, says what it resumed from, and ends with the
    numbers of the undamaged run."""
    (cfg,) = expand(make_params(n_seeds=1))
    config = tmp_path / "run.json"
    config.write_text(json.dumps(cfg))
    whole = tmp_path / "whole"
    assert train.main(["--config", str(config), "--out", str(whole)]) == 0
    for name, (damage, messages) in DAMAGE.items():
        d = tmp_path / re.sub(r"\W+", "_", name)
        shutil.copytree(whole, d)
        damage(d)
        assert train.main(["--config", str(config), "--out", str(d)]) == 0, name
        log = last_attempt(d)
        for message in messages:
            assert message in log, (name, message, log)
        if "3 epochs done" in messages[-1]:
            assert "epoch 3/3 " not in log, name  # nothing retrained
        assert numbers(d) == numbers(whole), name
        assert history(d) == history(whole), name


# ------------------------------------------------------------ results of an older version


def fabricate_results(root: Path, n_seeds: int = 3) -> list[Path]:
    """params.yaml and finished-looking run folders (no training), in `root`."""
    write_params(root, make_params(n_seeds=n_seeds))
    dirs = []
    for i, cfg in enumerate(planned_configs(root)):
        d = runs.run_dir(root / "results", cfg)
        d.mkdir(parents=True)
        acc = 0.5 + i / 100
        m = {"status": "ok", "config_hash": cfg["config_hash"], "test_acc": acc, "val_acc": acc}
        m |= {"best_val_acc": acc, "best_epoch": 3, "epochs_done": 3, "wall_s": 1.0}
        (d / "metrics.json").write_text(json.dumps(m))
        (d / "history.tsv").write_text("epoch\ttest_acc\ttrain_loss\n1\t0.4\t1.0\n")
        dirs.append(d)
    return dirs


def test_results_of_an_older_version_give_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dirs = fabricate_results(tmp_path)
    assert aggregate.main(["--study", "grid"]) == 0
    # An older version's files: a metrics.json without best_val_acc, one cut short, a history
    # that is not a table, and a runs.csv without the config_hash column.
    m = json.loads((dirs[0] / "metrics.json").read_text())
    del m["best_val_acc"]
    (dirs[0] / "metrics.json").write_text(json.dumps(m))
    (dirs[1] / "metrics.json").write_text('{"status": "ok", "test_acc": 0.')
    (dirs[2] / "history.tsv").write_bytes(b"\x00\xff garbage \xfe")
    runs_csv = tmp_path / "results" / "summaries" / grid_folder(tmp_path) / "grid" / "runs.csv"
    pd.read_csv(runs_csv).drop(columns="config_hash").to_csv(runs_csv, index=False)
    capsys.readouterr()

    assert report.main([]) == 0
    out, err = capsys.readouterr()
    assert f"{runs_csv.relative_to(tmp_path)}: no column config_hash" in err
    html = (tmp_path / "reports" / "index.html").read_text()
    notes = [
        f"{dirs[0].relative_to(tmp_path)}/metrics.json: missing field best_val_acc",
        f"{dirs[1].relative_to(tmp_path)}/metrics.json: not valid JSON",
    ]
    for note in notes:
        assert note in html

    assert aggregate.main(["--study", "grid"]) == 0
    out, err = capsys.readouterr()
    for note in notes:
        assert note in out
    assert "Traceback" not in out + err
    statuses = runs_table(tmp_path)["status"].tolist()
    assert statuses == ["unreadable", "unreadable", "ok"]


# ------------------------------------------------------------- disk full, read-only results


def _fail_fsync(monkeypatch):  # the disk fills up: write/fsync fail, naming no file
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


def _fail_mkstemp(monkeypatch):  # read-only: the temporary file cannot be created
    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        raise OSError(
            errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, f"{prefix}x{suffix}")
        )

    monkeypatch.setattr(io_utils.tempfile, "mkstemp", mkstemp)


def _fail_replace(monkeypatch):  # read-only (remounted) by the time of the rename
    def replace(src, dst, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", replace)


WRITE_FAILURES = {"disk full": _fail_fsync, "read-only": _fail_mkstemp}
WRITE_FAILURES["read-only at rename"] = _fail_replace


@contextlib.contextmanager
def failing_writes(how: str):
    with pytest.MonkeyPatch.context() as mp:
        WRITE_FAILURES[how](mp)
        yield


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("how", list(WRITE_FAILURES))
def test_a_failed_write_keeps_the_previous_file(tmp_path, how):
    path = tmp_path / "metrics.json"
    io_utils.atomic_write_json(path, {"status": "ok", "test_acc": 0.5})
    before = folder_state(tmp_path)
    with failing_writes(how), pytest.raises(OSError):
        io_utils.atomic_write_json(path, {"status": "ok", "test_acc": 0.9})
    assert folder_state(tmp_path) == before  # old content, and no temporary file left


@pytest.mark.parametrize(
    "how",
    [
        "disk full",
        "read-only",
        "read-only at rename",
    ],
)
def test_a_failed_write_names_the_file(tmp_path, how):
    path = tmp_path / "metrics.json"
    with failing_writes(how), pytest.raises(OSError) as err:
        io_utils.atomic_write_json(path, {"status": "ok"})
    assert str(tmp_path) in str(err.value)


def test_aggregate_and_record_failure_on_a_full_disk(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dirs = fabricate_results(tmp_path)
    assert aggregate.main(["--study", "grid"]) == 0
    # A run that crashed before finishing (record_failure keeps a finished run's metrics.json:
    # the runs of a pack that ended before the pack crashed).
    (dirs[0] / "metrics.json").unlink()
    grid.write_run_configs(planned_configs(tmp_path), "results")
    cfg = runs.config_path("results", planned_configs(tmp_path)[0])
    before = folder_state(tmp_path / "results")
    capsys.readouterr()

    with failing_writes("disk full"), pytest.raises(SystemExit) as err:
        aggregate.main(["--study", "grid"])
    folder = f"results/summaries/{grid_folder(tmp_path)}/grid"
    assert f"cannot write the grid aggregate to {folder}" in str(err.value)
    assert "No space left on device" in str(err.value)

    with failing_writes("disk full"):
        code = record_failure.main(
            ["--config", str(cfg), "--out", str(dirs[0]), "--log", "job.log", "--exit-code", "1"]
        )
    assert code == 1
    assert f"cannot write {dirs[0] / 'metrics.json'}" in capsys.readouterr().err
    assert folder_state(tmp_path / "results") == before  # earlier results intact, no temp files
