"""The run folder, and nothing else: where a run's files are, what they are called, its status,
writing its metrics.json, reading its state, and "finished". Every other module asks here.

    results/configs/<grid>/<study>/<run_id>.json   the run config (written by the grid)
    results/runs/<grid>/<study>/<run_id>/          the run folder (written by src/train.py)
        metrics.json   written last and atomically: status ok | diverged | failed
        history.tsv    one row per epoch; train.log its log; config.json the config it used
        trainer.lock   held (flock) by the live trainer: the run is `running` while it is held

`<grid>` keeps the results of different scales and different data apart (`grid_name`), so
switching scale and back trains nothing twice. A run is finished when its metrics.json says ok
or diverged under the run's config hash: the one rule for "done" (the planner, train.py and the
failure recorder all use `finished`).

A live trainer is known by an OS lock, not by a file's age: for its whole life train.py holds an
exclusive flock on RUN_DIR/trainer.lock (`hold`), which the kernel drops the moment the process
ends, however it ends. A reader (`live_holder`) tries a shared flock without blocking: refused
means a trainer is alive. The lock file's content (pid, host, start time) is informational; the
file is never replaced by a rename (that would orphan the lock).

Standard library only: `make status` reads every run folder of the full grid in well under 2 s.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from normrepro.io_utils import atomic_write_json

# What a run's metrics.json says (written), and what a reader may also find.
OK, DIVERGED, FAILED = "ok", "diverged", "failed"
RUNNING, MISSING, STALE, UNREADABLE = "running", "missing", "stale", "unreadable"
FINISHED = (OK, DIVERGED)  # nothing left to do: never retrained, never resumed
STATUSES = (OK, DIVERGED, FAILED, MISSING, STALE, UNREADABLE, RUNNING)
METRICS, HISTORY, TRAIN_LOG, LOCK_NAME = "metrics.json", "history.tsv", "train.log", "trainer.lock"
# metrics.json fields without which a finished run cannot be used (the trainer's contract).
REQUIRED_FIELDS = ("status", "config_hash", "test_acc", "val_acc", "best_val_acc", "wall_s")
# What the runs of one cell differ in: all else equal, they can be one job, and one fused model.
PER_RUN_KEYS = ("seed", "run_id", "config_hash")
# A reader holds its shared lock for microseconds; a trainer that finds the lock taken retries
# this long before it concludes that another trainer holds it, says so, and waits for it.
READER_GRACE_S = 2.0


# ---------------------------------------------------------------------------- where


def grid_name(params: dict) -> str:
    """The name of a grid's folders: its scale, its dataset and a short hash of its (effective)
    top-level data section, label aside: smoke-fashion-mnist-3fa2c1. Another scale or any
    change of the data is another grid, whose runs never overwrite these."""
    data = {k: v for k, v in params["data"].items() if k != "label"}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:6]
    return f"{params['scale']}-{data['name']}-{digest}"


def run_dir(results: str | os.PathLike, cfg: dict) -> Path:
    return Path(results) / "runs" / cfg["grid"] / cfg["study"] / cfg["run_id"]


def config_path(results: str | os.PathLike, cfg: dict) -> Path:
    return Path(results) / "configs" / cfg["grid"] / cfg["study"] / f"{cfg['run_id']}.json"


# ---------------------------------------------------------------------------- cells


def cell_key(cfg: dict) -> str:
    """The key of a run's cell: its config without what distinguishes a cell's runs."""
    return json.dumps({k: v for k, v in cfg.items() if k not in PER_RUN_KEYS}, sort_keys=True)


def cell_difference(a: dict, b: dict) -> str | None:
    """The first key (sorted) in which run configs a and b differ beyond PER_RUN_KEYS; None
    when they are runs of one cell."""
    for key in sorted(set(a) | set(b)):
        if key not in PER_RUN_KEYS and a.get(key) != b.get(key):
            return key
    return None


# ---------------------------------------------------------------------------- finished


def finished_hash(run: str | os.PathLike) -> str | None:
    """config_hash of a run folder whose metrics.json says ok or diverged; None if it is not
    finished (absent, failed, unreadable)."""
    try:
        metrics = json.loads((Path(run) / METRICS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or metrics.get("status") not in FINISHED:
        return None
    return metrics.get("config_hash")


def finished(run: str | os.PathLike, config_hash: str) -> bool:
    """Whether the run folder finished under this config (a run of another config is not)."""
    return config_hash is not None and finished_hash(run) == config_hash


# ---------------------------------------------------------------------------- writing


def write_metrics(run: str | os.PathLike, metrics: dict) -> None:
    """metrics.json, written last and atomically (a reader sees the old file or the new one)."""
    if metrics.get("status") not in (OK, DIVERGED, FAILED):
        raise ValueError(
            f"metrics status: got {metrics.get('status')!r}; allowed: ok, diverged, failed"
        )
    atomic_write_json(Path(run) / METRICS, metrics)


def write_failed(run: str | os.PathLike, cfg: dict, **record) -> bool:
    """Record a run whose trainer failed (`record`: exit_code, log_path, error, ...) as `failed`,
    unless it finished (a pack's runs that ended before the crash keep their results). Returns
    whether it wrote."""
    if finished(run, cfg.get("config_hash")):
        return False
    Path(run).mkdir(parents=True, exist_ok=True)
    write_metrics(run, {"status": FAILED, **record, "study": cfg.get("study"),
                        "run_id": cfg.get("run_id"), "config_hash": cfg.get("config_hash"),
                        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip
    return True


# ---------------------------------------------------------------------------- the trainer's lock


def process_start_time() -> float:
    """This process's start (Unix seconds), interpreter start-up included; now where /proc
    cannot tell (non-Linux)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, clock ticks
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


@contextlib.contextmanager
def hold(*run_dirs: str | os.PathLike) -> Iterator[None]:
    """Hold RUN_DIR/trainer.lock of every run this process trains (one, or a pack's members)
    until the block ends. On an exception (a bad config, missing data) a lock file or run folder
    this call created is removed again, so a run that never started leaves its folder as it was."""
    with contextlib.ExitStack() as stack:
        for run in run_dirs:
            stack.enter_context(_hold_one(Path(run)))
        yield


@contextlib.contextmanager
def _hold_one(run: Path) -> Iterator[None]:
    created_dir = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK_NAME
    created_file = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock_exclusive(fd, path)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": process_start_time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield
        except BaseException:
            if created_file:
                path.unlink(missing_ok=True)
            if created_dir:
                with contextlib.suppress(OSError):  # not empty: the run wrote something
                    run.rmdir()
            raise
    finally:
        os.close(fd)  # releases the lock (the kernel does the same on any exit)


def _lock_exclusive(fd: int, path: Path) -> None:
    deadline = time.monotonic() + READER_GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    holder = lock_info(path.parent)
    print(
        f"{path}: another trainer (pid {holder.get('pid', '?')} on {holder.get('host', '?')}) "
        "is training this run; waiting for it to end",
        file=sys.stderr,
    )
    fcntl.flock(fd, fcntl.LOCK_EX)


def lock_info(run: str | os.PathLike) -> dict:
    """What the last trainer of this run wrote into its lock file ({} if none): pid, host,
    started. Informational: a leftover file means nothing about a live trainer."""
    try:
        info = json.loads((Path(run) / LOCK_NAME).read_text())
    except (OSError, ValueError):  # absent, being written, or not ours
        return {}
    return info if isinstance(info, dict) else {}


def live_holder(run: str | os.PathLike) -> dict | None:
    """The live trainer of this run folder ({"pid", "host", "started"}, possibly empty), or
    None if no process holds its lock. Never blocks, never writes."""
    try:
        fd = os.open(Path(run) / LOCK_NAME, os.O_RDONLY)
    except OSError:  # absent (never trained here), or unreadable: nobody we can see
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None  # a filesystem without flock: cannot tell, assume no trainer
            return lock_info(run)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- reading


def read_history(run: str | os.PathLike) -> list[dict]:
    """history.tsv as a list of {column: float} rows (epoch as int); [] when absent/unreadable."""
    try:
        with open(Path(run) / HISTORY, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        out = []
        for row in rows:
            parsed = {k: float(v) for k, v in row.items()}
            parsed["epoch"] = int(parsed["epoch"])
            out.append(parsed)
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return []


def failed_log(run: Path) -> Path | None:
    """The log a failed run left: the `.failed` marker's first line (a path) or train.log."""
    marker = run / ".failed"
    if marker.is_file():
        first = marker.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return Path(first[0]) if first else run / TRAIN_LOG
    log = run / TRAIN_LOG
    return log if log.is_file() else None


def read_state(run: str | os.PathLike, planned_hash: str | None, required=REQUIRED_FIELDS) -> dict:
    """{"status", "note", "log_path", "metrics", "holder", "history"} of one run folder (never
    raises on a bad file). `metrics` is metrics.json for ok / diverged runs, else None;
    `holder` the live trainer (running runs); `history` the epochs done (running runs)."""
    run = Path(run)
    state = {"log_path": None, "note": None, "metrics": None, "holder": None, "history": None}
    state.update(_file_state(run, planned_hash, required))
    if state["status"] in FINISHED:
        return state  # what the trainer wrote last is the truth, live or not
    holder = live_holder(run)
    if holder is None:
        return state
    history = read_history(run)
    done = history[-1]["epoch"] if history else 0
    log = run / TRAIN_LOG
    state.update(status=RUNNING, holder=holder, history=history, metrics=None,
                 log_path=str(log) if log.is_file() else None,
                 note=f"running (pid {holder.get('pid', '?')}): {done} epochs done")  # fmt: skip
    return state


def _file_state(run: Path, planned_hash: str | None, required) -> dict:
    """The status the files alone give (no lock test)."""
    path = run / METRICS
    if not path.is_file():
        log = failed_log(run)
        if log is None:
            return {"status": MISSING, "note": "not run yet"}
        note = f"no metrics.json and no live trainer (crashed or killed): see {log}"
        return {"status": FAILED, "log_path": str(log), "note": note}
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"status": UNREADABLE, "note": f"{path}: not valid JSON ({e})"}
    if not isinstance(m, dict):
        return {"status": UNREADABLE, "note": f"{path}: expected a JSON object"}
    if "config_hash" in m and m["config_hash"] != planned_hash:
        note = (f"{path}: config_hash {m['config_hash']} != planned {planned_hash} "
                "(written for an older config; rerun)")  # fmt: skip
        return {"status": STALE, "note": note}
    if m.get("status") == FAILED:
        log = m.get("log_path") or failed_log(run)
        slurm = f"; Slurm log: {m['slurm_log_path']}" if m.get("slurm_log_path") else ""
        return {"status": FAILED, "log_path": None if log is None else str(log),
                "note": f"exit code {m.get('exit_code')}: see {log}{slurm}"}  # fmt: skip
    absent = [k for k in required if k not in m]
    if absent:
        return {"status": UNREADABLE, "note": f"{path}: missing field {', '.join(absent)}"}
    if m["status"] not in FINISHED:
        note = f"{path}: status {m['status']!r} not one of ok, diverged, failed"
        return {"status": UNREADABLE, "note": note}
    if m["status"] == OK and not isinstance(m["test_acc"], int | float):
        return {
            "status": UNREADABLE,
            "note": f"{path}: status ok but test_acc is {m['test_acc']!r}",
        }
    state = {"status": m["status"], "metrics": m}
    if m["status"] == DIVERGED:
        state["note"] = f"diverged at epoch {m.get('diverged_epoch')}"
    if (run / TRAIN_LOG).is_file():
        state["log_path"] = str(run / TRAIN_LOG)
    return state
