"""The state of one run folder: ok, diverged, running, failed, missing, stale or unreadable.

A live trainer is known by an OS lock, not by a file's age: for its whole life src/train.py holds
an exclusive flock on RUN_DIR/trainer.lock (`hold`), which the kernel drops the moment the process
ends, however it ends (exit, exception, SIGKILL, power loss). A reader (`live_holder`) tries a
shared flock on the same file without blocking, from any process: refused means a trainer is
alive there. So a run with no metrics.json and a train.log is `running` while its lock is held
and `failed` (crashed; the next invocation resumes it from its checkpoint) once it is not.

The lock file's content (pid, host, process start time) is informational only; its presence or
age means nothing. The file is never replaced by a rename (that would orphan the lock).

Standard library only: `make status` reads every run folder of the full grid in well under 2 s.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "trainer.lock"
# metrics.json fields without which a run cannot be used (trainer contract, DESIGN.md).
REQUIRED_FIELDS = ("status", "config_hash", "test_acc", "val_acc", "best_val_acc", "wall_s")
# A reader holds its shared lock for microseconds; a trainer that finds the lock taken retries
# this long before it concludes that another trainer holds it, says so, and waits for it.
READER_GRACE_S = 2.0


# ---------------------------------------------------------------------------- the trainer side


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
        for run_dir in run_dirs:
            stack.enter_context(_hold_one(Path(run_dir)))
        yield


@contextlib.contextmanager
def _hold_one(run_dir: Path) -> Iterator[None]:
    created_dir = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
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
                    run_dir.rmdir()
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
    holder = _read_info(path)
    print(
        f"{path}: another trainer (pid {holder.get('pid', '?')} on {holder.get('host', '?')}) "
        "is training this run; waiting for it to end",
        file=sys.stderr,
    )
    fcntl.flock(fd, fcntl.LOCK_EX)


# ---------------------------------------------------------------------------- the reader side


def _read_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):  # being written, or not ours
        return {}
    return info if isinstance(info, dict) else {}


def live_holder(run_dir: str | os.PathLike) -> dict | None:
    """The live trainer of this run folder ({"pid", "host", "started"}, possibly empty), or
    None if no process holds its lock. Never blocks, never writes."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # absent (never trained here), or unreadable: nobody we can see
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None  # a filesystem without flock: cannot tell, assume no trainer
            return _read_info(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_history(run_dir: str | os.PathLike) -> list[dict]:
    """history.tsv as a list of {column: float} rows (epoch as int); [] when absent/unreadable."""
    try:
        with open(Path(run_dir) / "history.tsv", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        out = []
        for row in rows:
            parsed = {k: float(v) for k, v in row.items()}
            parsed["epoch"] = int(parsed["epoch"])
            out.append(parsed)
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return []


def failed_log(run_dir: Path) -> Path | None:
    """The log a failed run left: the `.failed` marker's first line (a path) or train.log."""
    marker = run_dir / ".failed"
    if marker.is_file():
        first = marker.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return Path(first[0]) if first else run_dir / "train.log"
    log = run_dir / "train.log"
    return log if log.is_file() else None


def read_state(
    run_dir: str | os.PathLike, planned_hash: str | None, required=REQUIRED_FIELDS
) -> dict:
    """{"status", "note", "log_path", "metrics", "holder", "history"} of one run folder (never
    raises on a bad file). `metrics` is metrics.json for ok / diverged runs, else None;
    `holder` the live trainer (running runs); `history` the epochs done (running runs)."""
    run_dir = Path(run_dir)
    state = _static_state(run_dir, planned_hash, required)
    state.setdefault("log_path", None)
    state.setdefault("note", None)
    state.setdefault("metrics", None)
    state["holder"] = state["history"] = None
    if state["status"] in ("ok", "diverged"):
        return state  # finished: what the trainer wrote last is the truth, live or not
    holder = live_holder(run_dir)
    if holder is None:
        return state
    history = read_history(run_dir)
    done = history[-1]["epoch"] if history else 0
    log = run_dir / "train.log"
    state.update(
        status="running",
        holder=holder,
        history=history,
        metrics=None,
        log_path=str(log) if log.is_file() else None,
        note=f"running (pid {holder.get('pid', '?')}): {done} epochs done",
    )
    return state


def _static_state(run_dir: Path, planned_hash: str | None, required) -> dict:
    """The status the files alone give (no lock test): aggregate.py's rules for a run dir."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        log = failed_log(run_dir)
        if log is None:
            return {"status": "missing", "note": "not run yet"}
        return {
            "status": "failed",
            "log_path": str(log),
            "note": f"no metrics.json and no live trainer (crashed or killed): see {log}",
        }
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"status": "unreadable", "note": f"{path}: not valid JSON ({e})"}
    if not isinstance(m, dict):
        return {"status": "unreadable", "note": f"{path}: expected a JSON object"}
    if "config_hash" in m and m["config_hash"] != planned_hash:
        return {
            "status": "stale",
            "note": f"{path}: config_hash {m['config_hash']} != planned {planned_hash} "
            "(written for an older config; rerun)",
        }
    if m.get("status") == "failed":
        log = m.get("log_path") or failed_log(run_dir)
        return {
            "status": "failed",
            "log_path": None if log is None else str(log),
            "note": f"exit code {m.get('exit_code')}: see {log}"
            + (f"; Slurm log: {m['slurm_log_path']}" if m.get("slurm_log_path") else ""),
        }
    absent = [k for k in required if k not in m]
    if absent:
        return {"status": "unreadable", "note": f"{path}: missing field {', '.join(absent)}"}
    if m["status"] not in ("ok", "diverged"):
        return {
            "status": "unreadable",
            "note": f"{path}: status {m['status']!r} not one of ok, diverged, failed",
        }
    if m["status"] == "ok" and not isinstance(m["test_acc"], int | float):
        return {
            "status": "unreadable",
            "note": f"{path}: status ok but test_acc is {m['test_acc']!r}",
        }
    state = {"status": m["status"], "metrics": m}
    if m["status"] == "diverged":
        state["note"] = f"diverged at epoch {m.get('diverged_epoch')}"
    if (run_dir / "train.log").is_file():
        state["log_path"] = str(run_dir / "train.log")
    return state
