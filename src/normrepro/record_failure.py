"""The end of a train job: record the runs its trainer left unfinished as `failed`, then write
the job's record (the file Snakemake waits for), so the grid goes on.

The train rule calls it after src/train.py, whatever train.py's exit code: for a pack (--config /
--out repeated, as src/train.py takes them) every run that did not finish is recorded with the
job's log (`runs.write_failed`). The study still aggregates and the report lists each failed
run with its log; the next invocation trains it again, since a failed run is not finished and
its job's record then asks for another attempt (grid.record_attempt).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from normrepro import grid, runs
from normrepro.io_utils import read_json


def last_lines(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def slurm_log() -> str | None:
    """Under Slurm, the job's own log (`StdOut=` of `scontrol show job`), which holds what the
    trainer's log cannot: Slurm's kill messages, the node, the plugin's lines. None elsewhere."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bStdOut=(\S+)", shown)
    return match.group(1) if match else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", required=True, action="append", help="the run's resolved config (RUN.json)"
    )
    ap.add_argument("--out", required=True, action="append", help="the run directory")
    ap.add_argument(
        "--log", required=True, action="append", help="the job's log file (once, or per run)"
    )
    ap.add_argument("--exit-code", type=int, required=True, help="src/train.py's exit status")
    ap.add_argument("--job-record", type=Path, help="then write the job's record here")
    args = ap.parse_args(argv)
    logs = args.log * len(args.config) if len(args.log) == 1 else args.log
    if not len(args.config) == len(args.out) == len(logs):
        ap.error(
            f"--config is given {len(args.config)} times, --out {len(args.out)} times and --log "
            f"{len(args.log)} times; allowed: one --out per --config, --log once or per --config"
        )
    code = 0
    if args.exit_code != 0:
        for config, out, log in zip(args.config, args.out, logs, strict=True):
            code = max(code, record(config, Path(out), log, args.exit_code))
    if args.job_record is not None and code == 0:
        try:
            grid.write_job_record(args.job_record, [Path(o) for o in args.out], args.exit_code)
        except OSError as err:
            print(f"record_failure.py: cannot write {args.job_record}: {err}", file=sys.stderr)
            return 1
    return code


def record(config: str, out: Path, log: str, exit_code: int) -> int:
    """Write out/metrics.json as `failed`, unless the run finished (a pack's runs that ended
    before the crash keep their results)."""
    cfg = read_json(config)
    try:
        wrote = runs.write_failed(
            out,
            cfg,
            exit_code=exit_code,
            log_path=str(log),
            slurm_log_path=slurm_log(),  # null off Slurm
            error=last_lines(Path(log)),
        )
    except OSError as err:  # disk full, read-only: say where; the job then fails visibly
        print(f"record_failure.py: cannot write {out / runs.METRICS}: {err}", file=sys.stderr)
        return 1
    if wrote:
        print(f"run {cfg.get('study')}/{cfg.get('run_id')} failed (exit {exit_code}); log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
