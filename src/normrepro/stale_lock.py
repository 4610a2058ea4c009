"""Clear the lock a killed `snakemake` left behind, when that is safe (called at parse time).

A `snakemake` killed with SIGKILL (or by a power loss) leaves its lock files in
.snakemake/locks/, and Snakemake then refuses every later run ("Directory cannot be locked")
until `snakemake --unlock`. Here the everyday command clears such a lock itself, but only when
that is safe:
  - every normrepro `snakemake` holds an exclusive flock on .snakemake/normrepro.flock for its
    whole life; the kernel drops it when the process dies, however it dies. If another one holds
    it, nothing is touched and Snakemake's own lock check decides (a second run on the same
    files is refused with its "Directory cannot be locked" message);
  - if a job of the killed run is still alive (a `src/*.py` of this pipeline started from this
    directory: `kill -9` of the snakemake process alone leaves its jobs running), the run stops
    with a message naming it, instead of starting a second trainer on the same run folder.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path


class StaleLockError(RuntimeError):
    """A killed run's jobs are still alive: starting again would train a run twice."""


# The train rule runs src/train.py; the other jobs run package modules (python -m normrepro.X).
PIPELINE_SCRIPTS = ("src/train.py",)
PIPELINE_MODULES = ("normrepro.record_failure", "normrepro.aggregate", "normrepro.report")


def _live_jobs(workdir: str) -> list[str]:
    """'PID: command' of live processes started in `workdir` running a pipeline script (Linux
    /proc; elsewhere none are found)."""
    jobs = []
    proc = Path(os.sep, "proc")  # Linux; elsewhere absent
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(entry / "cwd") != workdir:
                continue
            argv = [
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:  # gone, a zombie, or another user's
            continue
        if any(a.endswith(PIPELINE_SCRIPTS) or a in PIPELINE_MODULES for a in argv):
            jobs.append(f"{entry.name}: {' '.join(a for a in argv if a)[:200]}")
    return jobs


def clear_stale_lock(meta_dir: str = ".snakemake"):
    """Take this process's flock; if that works, remove the locks a killed run left. Returns the
    flock's file descriptor (kept open for the process's life) or None."""
    try:
        Path(meta_dir).mkdir(exist_ok=True)
        fd = os.open(Path(meta_dir) / "normrepro.flock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        # Another snakemake is running here (or this filesystem has no flock): leave it all.
        os.close(fd)
        return None
    stale = sorted((Path(meta_dir) / "locks").glob("*.lock"))
    if not stale:
        return fd
    jobs = _live_jobs(os.getcwd())
    if jobs:
        raise StaleLockError(
            "a snakemake run on these results was killed, but its jobs are still running:\n  "
            + "\n  ".join(jobs)
            + "\nWait for them to end (or kill them), then rerun the same command."
        )
    for lock in stale:
        lock.unlink(missing_ok=True)
    print(
        f"Removed the lock of a snakemake run that was killed ({meta_dir}/locks): no other "
        "snakemake and none of its jobs are running here.",
        file=sys.stderr,
    )
    return fd
