"""Where a grid stands while it runs: per study planned / ok / running / diverged / failed /
missing, the epoch each running run is at, the wall time so far and an ETA.

    python -m normrepro.status [--last-grid | --config scale=smoke | --params P] [--json]
    make status [SCALE=smoke]      # without SCALE: the grid the last snakemake ran here

Read-only and lock-free: it reads each planned run's folder (runs.py: a run is `running` while
its trainer holds the run's lock), never Snakemake's lock or metadata, so it is safe from any
terminal while a grid runs. Standard library + config / runs / grid only (no torch, pandas,
scipy): under 2 s on the full grid.

ETA: the single-job seconds left, summed over unfinished jobs, divided by how many jobs have been
running side by side lately. A job is one trainer process: a run, or a seed pack (runtime.pack)
whose runs train together — started runs are grouped by the process their lock names, runs not
started yet by the grid's jobs (grid.jobs, for this machine's device), and a job needs what its
slowest run needs. A run's seconds per epoch are the median `seconds` of history.tsv
(its own epochs; else those of its cell — same config but the seed —, of runs of the same model,
width, batch size and data, of the same model, or of every run, in that order), plus a per-run
start-up time (interpreter, data, model: process start to end minus its epochs, median over
finished runs). A failed run resumes from its last checkpoint; a stale one starts over.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from normrepro import gpu_slots, grid
from normrepro import runs as run_folder  # `runs` names the planned runs' states here
from normrepro.config import ParamsError

COLUMNS = ("planned", "ok", "running", "diverged", "failed", "missing", "stale", "unreadable")
FINISHED = run_folder.FINISHED
WINDOW_S = 600.0  # how far back "lately" goes for the jobs-side-by-side estimate


# ---------------------------------------------------------------------------- reading


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def read_run(results: Path, cfg: dict) -> dict:
    """One planned run: its state and the times the cost model needs (Unix seconds)."""
    rdir = run_folder.run_dir(results, cfg)
    state = run_folder.read_state(rdir, cfg.get("config_hash"))
    status = state["status"]
    history = state["history"] if state["history"] is not None else run_folder.read_history(rdir)
    if status == "stale":
        history = []  # another config's epochs: it starts over, and they measure another run
    info = state["holder"] or run_folder.lock_info(rdir)
    seconds = [r["seconds"] for r in history if r.get("seconds", float("nan")) >= 0]
    wall = (state["metrics"] or {}).get("wall_s")
    return {
        "study": cfg["study"],
        "run_id": cfg["run_id"],
        "cfg": cfg,
        "status": status,
        "epochs": int(cfg["epochs"]),
        "done": history[-1]["epoch"] if history else 0,
        "last": history[-1] if history else None,
        "seconds": seconds,
        "started": info.get("started") if isinstance(info.get("started"), int | float) else None,
        "pid": (state["holder"] or {}).get("pid"),
        "process": (info.get("pid"), info.get("started")),  # the trainer (a pack's runs share it)
        "ended": _mtime(rdir / run_folder.METRICS) if status in FINISHED else None,
        "progress_at": _mtime(rdir / run_folder.HISTORY),  # the last epoch's end
        "wall_s": wall if isinstance(wall, int | float) else None,
    }


# ---------------------------------------------------------------------------- cost model


def _keys(cfg: dict) -> list[str]:
    """From the most to the least specific group of runs whose epochs cost about the same."""
    data = cfg.get("data") or {}
    shape = [cfg.get("model"), cfg.get("model_kw"), cfg.get("batch_size")]
    shape += [data.get("name"), data.get("train_subset"), data.get("image_size")]
    return [
        "cell:" + run_folder.cell_key(cfg),
        "shape:" + json.dumps(shape, sort_keys=True, default=str),
        "model:" + json.dumps([cfg.get("model"), cfg.get("model_kw")], sort_keys=True),
        "all",
    ]


def seconds_per_epoch(runs: list[dict]) -> dict[str, float]:
    """run key -> estimated seconds per epoch (absent: nothing measured anywhere)."""
    samples: dict[str, list[float]] = {}
    for r in runs:
        if r["seconds"]:
            own = statistics.median(r["seconds"])
            for key in _keys(r["cfg"]):
                samples.setdefault(key, []).append(own)
    out = {}
    for r in runs:
        if r["seconds"]:
            out[r["run_id"] + "@" + r["study"]] = statistics.median(r["seconds"])
            continue
        for key in _keys(r["cfg"]):
            if key in samples:
                out[r["run_id"] + "@" + r["study"]] = statistics.median(samples[key])
                break
    return out


def startup_seconds(runs: list[dict]) -> float:
    """Median (end - process start - its epochs' seconds) over finished runs; 0 if none."""
    gaps = [
        max(0.0, r["ended"] - r["started"] - sum(r["seconds"]))
        for r in runs
        if r["status"] in FINISHED and r["ended"] and r["started"] and r["seconds"]
    ]
    return statistics.median(gaps) if gaps else 0.0


def side_by_side(jobs: list[list[dict]], now: float) -> float:
    """Jobs running at once lately: the jobs' alive time within the last WINDOW_S (or since the
    first start, if later) divided by that window; at least 1, and at least the live count."""
    spans = []
    for job in jobs:
        starts = [r["started"] for r in job if r["started"]]
        ends = [now if r["status"] == "running" else r["ended"] for r in job]
        if starts and all(ends) and max(ends) > min(starts):
            spans.append((min(starts), max(ends)))
    n_live = sum(any(r["status"] == "running" for r in job) for job in jobs)
    if not spans:
        return float(max(1, n_live))
    lo = max(now - WINDOW_S, min(s for s, _ in spans))
    if now - lo < 1.0:
        return float(max(1, n_live))
    alive = sum(max(0.0, min(e, now) - max(s, lo)) for s, e in spans)
    return max(1.0, float(n_live), alive / (now - lo))


def group_jobs(runs: list[dict], params: dict, results: Path) -> list[list[dict]]:
    """The runs grouped by the trainer process that trains (or trained, or will train) them."""
    by_process: dict[tuple, list[dict]] = {}
    waiting = []
    for r in runs:
        started = r["status"] == "running" or r["status"] in FINISHED
        if started and None not in r["process"]:
            by_process.setdefault(r["process"], []).append(r)
        else:  # not started, or to be started again (failed: resumed; stale: retrained)
            waiting.append(r)
    by_id = {(r["study"], r["run_id"]): r for r in waiting}
    device = "cuda" if gpu_slots.usable_gpus() else "cpu"
    planned = grid.jobs([r["cfg"] for r in runs], params["runtime"]["pack"], device)
    # A job of the grid trains its unfinished runs together: those are what is left of it.
    left = [[by_id[key] for c in job.runs if (key := (c["study"], c["run_id"])) in by_id]
            for job in planned]  # fmt: skip
    return list(by_process.values()) + [job for job in left if job]


def seconds_left(r: dict, spe: float | None, startup: float, now: float) -> float | None:
    """Single-job seconds this run still needs (None: nothing measured to tell)."""
    if r["status"] in FINISHED:
        return 0.0
    if spe is None:
        return None
    left = (r["epochs"] - r["done"]) * spe
    if r["status"] != "running":
        return startup + left
    if r["done"] and r["progress_at"]:  # into its next epoch since the last one ended
        return max(0.0, left - (now - r["progress_at"]))
    since = now - r["started"] if r["started"] else 0.0
    return max(0.0, startup + left - since)


# ---------------------------------------------------------------------------- the summary


def grid_status(params: dict, results: str | Path, now: float | None = None) -> dict:
    """Everything `status` prints, as a dict (also --json)."""
    results = Path(results)
    now = time.time() if now is None else now
    runs = [
        read_run(results, cfg)
        for name in grid.studies(params)
        for cfg in grid.study_runs(params, name)
    ]
    spe = seconds_per_epoch(runs)
    startup = startup_seconds(runs)
    studies: dict[str, dict] = {}
    for r in runs:
        s = studies.setdefault(r["study"], {c: 0 for c in COLUMNS} | {"wall_s": 0.0})
        s["planned"] += 1
        s[r["status"]] += 1
        s.setdefault("work_left_s", 0.0)
        if r["status"] in FINISHED and r["wall_s"] is not None:
            s["wall_s"] += r["wall_s"]
        elif r["status"] == "running" and r["started"]:
            s["wall_s"] += max(0.0, now - r["started"])
    jobs = group_jobs(runs, params, results)
    unknown = 0
    total_left = 0.0
    for job in jobs:
        lefts = [
            seconds_left(r, spe.get(r["run_id"] + "@" + r["study"]), startup, now) for r in job
        ]
        unknown += sum(left is None for left in lefts)
        # a pack ends with its last run
        left = max((x for x in lefts if x is not None), default=0.0)
        total_left += left
        for r in job:  # a job's seconds, shared among the studies of its runs
            studies[r["study"]]["work_left_s"] += left / len(job)
    parallel = side_by_side(jobs, now)
    starts = [r["started"] for r in runs if r["started"]]
    running = [
        {
            "study": r["study"],
            "run_id": r["run_id"],
            "epochs_done": r["done"],
            "epochs": r["epochs"],
            "pid": r["pid"],
            "last": r["last"],
            "running_s": now - r["started"] if r["started"] else None,
        }
        for r in runs
        if r["status"] == "running"
    ]
    total = {c: sum(s[c] for s in studies.values()) for c in COLUMNS}
    total["wall_s"] = sum(s["wall_s"] for s in studies.values())
    total["work_left_s"] = total_left
    return {
        "scale": params.get("scale"),
        "grid": run_folder.grid_name(params),
        "results": str(results),
        "now": now,
        "studies": studies,
        "total": total,
        "running": running,
        "elapsed_s": now - min(starts) if starts else None,
        "parallel": parallel,
        "startup_s": startup,
        "eta_s": None if unknown else total_left / parallel,
        "unmeasured_runs": unknown,
    }


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def render_text(st: dict) -> str:
    head = f"{'study':<16}" + "".join(f"{c:>11}" for c in COLUMNS) + f"{'wall so far':>14}"
    which = st.get("which") or f"grid {st['grid']} (scale {st['scale']})"
    lines = [f"normrepro {which}; results in {st['results']}/", "", head]
    for name, s in [*st["studies"].items(), ("total", st["total"])]:
        if name == "total":
            lines.append("-" * len(head))
        row = f"{name:<16}" + "".join(f"{s[c]:>11}" for c in COLUMNS)
        lines.append(row + f"{duration(s['wall_s']):>14}")
    if st["running"]:
        lines += ["", "running:"]
        for r in st["running"]:
            last = r["last"] or {}
            nums = ""
            if last:
                nums = f" | train loss {last.get('train_loss', float('nan')):.4f}"
                nums += f", val acc {100 * last.get('val_acc', float('nan')):.2f}%"
            lines.append(
                f"  {r['study']}/{r['run_id']}: epoch {r['epochs_done']}/{r['epochs']} done"
                f" (pid {r['pid']}, {duration(r['running_s'])}){nums}"
            )
    lines.append("")
    lines.append(f"wall time so far: {duration(st['elapsed_s'])} since the first run started; "
                 f"{duration(st['total']['wall_s'])} of compute (finished runs + running ones)")  # fmt: skip
    left = st["total"]["planned"] - st["total"]["ok"] - st["total"]["diverged"]
    if st["total"]["missing"] == st["total"]["planned"]:
        lines.append(
            f"(no run of grid {st['grid']} has started under {st['results']}/runs: for the grid "
            "of another scale, run: make status SCALE=<scale>)"
        )
    if left == 0:
        lines.append("ETA: done: every planned run has finished")
    elif st["eta_s"] is None:
        lines.append(
            f"ETA: unknown until an epoch has been measured "
            f"({st['unmeasured_runs']} runs without a measured epoch like theirs)"
        )
    else:
        idle = "" if st["total"]["running"] else "; no run is running now (grid stopped?)"
        lines.append(
            f"ETA: {duration(st['eta_s'])} for the {left} unfinished runs "
            f"({duration(st['total']['work_left_s'])} of single-job work at the measured "
            f"seconds per epoch, {st['parallel']:.1f} jobs side by side{idle})"
        )
    return "\n".join(lines)


def _pct(x) -> str:
    return f"{100 * x:.2f}" if isinstance(x, int | float) and x == x else "—"


def interim_view(st: dict) -> dict | None:
    """The interim report's banner (normrepro.report --interim), every value already text; None
    when every planned run has finished (the report is then final)."""
    t = st["total"]
    finished = t["ok"] + t["diverged"]
    if finished == t["planned"]:
        return None
    rendered = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(st["now"]))
    running = []
    for r in st["running"]:
        last = r["last"] or {}
        loss = last.get("train_loss")
        running.append(
            {
                "run": f"{r['study']}/{r['run_id']}",
                "epoch": f"{r['epochs_done']}/{r['epochs']}",
                "train_loss": f"{loss:.4f}" if isinstance(loss, float) and loss == loss else "—",
                "val_acc": _pct(last.get("val_acc")),
                "test_acc": _pct(last.get("test_acc")),
                "running_for": duration(r["running_s"]),
            }
        )
    eta = "unknown" if st["eta_s"] is None else duration(st["eta_s"])
    return {
        "rendered": rendered,
        "finished": f"{finished} of {t['planned']}",
        "counts": ", ".join(f"{t[c]} {c}" for c in COLUMNS[1:] if t[c]),
        "eta": eta if t["running"] else f"{eta} once the grid runs again (no run is running now)",
        "running": running,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    grid.add_grid_options(ap)
    ap.add_argument("--json", action="store_true", help="print the status as JSON")
    args = ap.parse_args(argv)
    try:
        params, which = grid.params_from_cli(args)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    st = grid_status(params, args.results)
    st["which"] = which
    print(json.dumps(st, indent=1, default=str) if args.json else render_text(st))
    return 0


if __name__ == "__main__":
    sys.exit(main())
