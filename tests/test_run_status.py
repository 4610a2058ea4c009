"""A run in progress reads as `running`, a killed one as `failed` (resumable): normrepro.runs.

The live case holds a REAL trainer process (src/train.py on a tiny synthetic config) and reads its
run folder from this, another, process; then SIGKILLs it mid-epoch and reads it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import make_cfg, write_cfg

from normrepro import aggregate, checkpoint, runs

ROOT = Path(__file__).resolve().parents[1]


def history_rows(run_dir: Path) -> int:
    """Epochs in history.tsv, counted here independently of runs."""
    lines = (run_dir / "history.tsv").read_text().splitlines()
    return len(lines) - 1


def wait_for(pred, timeout: float = 120.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc is None or proc.poll() is None, "the trainer ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_live_trainer_reads_running_then_failed_once_killed(tmp_path):
    # 2,000 images at 16 px: about a second per epoch on one thread, 50 epochs: it stays alive
    cfg = make_cfg(epochs=50, data={**make_cfg()["data"], "train_subset": 2021})
    cfg_path = write_cfg(tmp_path, cfg)
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "src/train.py"), "--config", str(cfg_path)]
    proc = subprocess.Popen([*cmd, "--out", str(run_dir)], stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: (run_dir / "history.tsv").is_file() and history_rows(run_dir) >= 1,
                 proc=proc)  # fmt: skip
        state = runs.read_state(run_dir, None)
        done = history_rows(run_dir)  # read after: an epoch may have ended in between
        assert state["status"] == "running"
        assert state["holder"]["pid"] == proc.pid
        assert len(state["history"]) in (done, done - 1) and len(state["history"]) >= 1
        assert not (run_dir / "metrics.json").exists()
        # aggregation agrees (never `failed` while it runs) and counts it per cell
        row = aggregate.read_run(run_dir, None)
        assert row["status"] == "running" and row["log_path"] == str(run_dir / "train.log")
        assert row["epochs_done"] >= 1
        # a reader's test never disturbs the trainer: it goes on writing epochs
        before = history_rows(run_dir)
        wait_for(lambda: history_rows(run_dir) > before, proc=proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-epoch: epochs take about a second
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    state = runs.read_state(run_dir, None)
    assert state["status"] == "failed" and state["holder"] is None
    assert state["log_path"] == str(run_dir / "train.log")
    assert aggregate.read_run(run_dir, None)["status"] == "failed"
    # resumable: a checkpoint of a finished epoch is there for the next invocation
    assert any((run_dir / n).exists() for n in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS))


HOLDER = """
import sys, time
from normrepro import runs
with runs.hold(*sys.argv[1:]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_lock_of_a_pack_is_held_for_every_member_and_freed_by_sigkill(tmp_path):
    members = [tmp_path / f"m{k}" for k in range(3)]
    code = HOLDER.format(src=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, members)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        for m in members:
            holder = runs.live_holder(m)
            assert holder is not None and holder["pid"] == proc.pid
            (m / "train.log").write_text("epoch 1\n")
            assert runs.read_state(m, None)["status"] == "running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    for m in members:  # the kernel dropped the locks: no cleanup needed
        assert (m / runs.LOCK_NAME).exists()
        assert runs.live_holder(m) is None
        assert runs.read_state(m, None)["status"] == "failed"


def test_states_without_a_live_trainer(tmp_path):
    """The file rules, and that a leftover lock file alone means nothing."""
    h = "hash-now"
    ok = tmp_path / "ok"
    ok.mkdir()
    metrics = {"status": "ok", "config_hash": h, "test_acc": 0.9, "val_acc": 0.8,
               "best_val_acc": 0.85, "wall_s": 3.0}  # fmt: skip
    (ok / "metrics.json").write_text(json.dumps(metrics))
    (ok / runs.LOCK_NAME).write_text('{"pid": 1}')  # a finished trainer's file
    assert runs.read_state(ok, h)["status"] == "ok"
    assert runs.read_state(ok, "hash-other")["status"] == "stale"
    assert runs.read_state(tmp_path / "absent", h)["status"] == "missing"
    with runs.hold(ok):  # a live trainer rerunning a stale run: running, not stale
        assert runs.read_state(ok, "hash-other")["status"] == "running"
        assert runs.read_state(ok, h)["status"] == "ok"  # finished is final
    assert runs.live_holder(ok) is None


def test_hold_on_an_exception_leaves_no_trace(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError), runs.hold(fresh):
        assert (fresh / runs.LOCK_NAME).is_file()
        raise RuntimeError("bad config")
    assert not fresh.exists()
