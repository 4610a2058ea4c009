"""Record a crashed run: a `failed` metrics.json naming its log, so the grid goes on.

Called by the Snakemake train rule when src/train.py exits non-zero (an exception, out of
memory, a kill). The study still aggregates and the report lists the run as failed with its log;
the next invocation reruns it, since src/grid.py treats a failed metrics.json as unfinished.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from io_utils import atomic_write_json, read_json  # noqa: E402


def last_lines(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the run's resolved config (RUN.json)")
    ap.add_argument("--out", required=True, help="the run directory")
    ap.add_argument("--log", required=True, help="the job's log file")
    ap.add_argument("--exit-code", type=int, required=True)
    args = ap.parse_args(argv)
    cfg = read_json(args.config)
    out = Path(args.out)
    metrics = {
        "status": "failed",
        "exit_code": args.exit_code,
        "log_path": str(args.log),
        "error": last_lines(Path(args.log)),
        "study": cfg.get("study"),
        "run_id": cfg.get("run_id"),
        "config_hash": cfg.get("config_hash"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "metrics.json", metrics)
    except OSError as err:  # disk full, read-only: say where; the job then fails visibly
        print(f"record_failure.py: cannot write {out / 'metrics.json'}: {err}", file=sys.stderr)
        return 1
    print(
        f"run {cfg.get('study')}/{cfg.get('run_id')} failed (exit {args.exit_code}); log: {args.log}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
