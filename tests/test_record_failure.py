"""A run that fails on a Slurm node is recorded with Slurm's own log beside the trainer's, and
the aggregation (hence the report's failed-runs list) names both."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from normrepro import aggregate, record_failure


def test_failed_run_under_slurm_names_the_slurm_log(tmp_path, monkeypatch):
    # A stand-in for `scontrol show job 4242` on the submit node (the real one is tested in
    # tests/test_slurm.py): prints the job record with its StdOut path.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    slurm_log = tmp_path / "slurm_logs" / "4242.log"
    scontrol.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2 $3" = "show job 4242" ] || exit 1\n'
        f'echo "JobId=4242 JobName=train"\necho "   StdErr={slurm_log}"\n'
        f'echo "   StdOut={slurm_log}"\n'
    )
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")

    cfg = {"study": "s", "run_id": "r", "config_hash": "abc"}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    job_log = tmp_path / "job.log"
    job_log.write_text("Traceback ...\nRuntimeError: boom\n")
    out = tmp_path / "runs" / "r"
    argv = ["--config", str(tmp_path / "run.json"), "--out", str(out), "--log", str(job_log)]
    assert record_failure.main([*argv, "--exit-code", "1"]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["log_path"] == str(job_log)
    assert metrics["slurm_log_path"] == str(slurm_log)
    row = aggregate.read_run(out, "abc")
    assert row["status"] == "failed" and row["log_path"] == str(job_log)
    assert f"Slurm log: {slurm_log}" in row["note"]

    # Off Slurm: no Slurm log, and the note is what it was.
    monkeypatch.delenv("SLURM_JOB_ID")
    (out / "metrics.json").unlink()
    assert record_failure.main([*argv, "--exit-code", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["slurm_log_path"] is None
    assert "Slurm log" not in aggregate.read_run(out, "abc")["note"]
    assert Path(job_log).is_file()


def test_the_end_of_a_job_records_its_crashed_runs_then_the_job(tmp_path):
    """record_failure ends every train job: after a crash (exit code != 0) each unfinished run
    is `failed` and a finished one kept; after a clean exit nothing is recorded; either way the
    job's record, what Snakemake waits for, lists each run's status as the job left it."""
    runs = {}
    for name, status in (("done", "ok"), ("cut", None)):
        cfg = {"study": "s", "run_id": name, "config_hash": f"h-{name}"}
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
        out = tmp_path / "runs" / name
        out.mkdir(parents=True)
        if status:
            (out / "metrics.json").write_text(
                json.dumps({"status": status, "config_hash": cfg["config_hash"]})
            )
        runs[name] = out
    argv = []
    for name, out in runs.items():
        argv += ["--config", str(tmp_path / f"{name}.json"), "--out", str(out)]
    log = tmp_path / "job.log"
    log.write_text("RuntimeError: boom\n")

    record = tmp_path / "jobs" / "s" / "done-s0-1.0.json"
    assert (
        record_failure.main(
            [*argv, "--log", str(log), "--exit-code", "0", "--job-record", str(record)]
        )
        == 0
    )
    assert not (runs["cut"] / "metrics.json").exists()  # a clean exit records no failure
    assert json.loads(record.read_text())["runs"] == {"done": "ok", "cut": None}

    again = tmp_path / "jobs" / "s" / "done-s0-1.1.json"
    assert (
        record_failure.main(
            [*argv, "--log", str(log), "--exit-code", "1", "--job-record", str(again)]
        )
        == 0
    )
    written = json.loads(again.read_text())
    assert written["runs"] == {"done": "ok", "cut": "failed"} and written["exit_code"] == 1
    assert json.loads((runs["done"] / "metrics.json").read_text())["status"] == "ok"  # kept
    assert json.loads((runs["cut"] / "metrics.json").read_text())["log_path"] == str(log)
