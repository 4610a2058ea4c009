"""Calibrate the laptop preset: training-subset size against epochs at a fixed image-epoch budget,
judged by every norm of the study at the normal batch, on one validation set, never the test set.

The laptop scale has to fit about an hour of 2 CPU cores, i.e. a fixed number of training
image-epochs per run (train_subset x epochs). Within it, this script trades subset size against
epochs (and, optionally, the peak learning rate by a factor): each candidate is trained for EVERY
norm of batch_sweep (BN, GN G=8, GN+WS G=8 at laptop scale) at the study's largest (normal)
batch size, with >= 2 seeds. Why this is fair to the norms:
- the criterion is the mean over the norms of each norm's mean final validation accuracy
  (`norm_mean`), so no norm's regime is favoured and no BN-vs-GN difference is looked at;
- every candidate is judged on ONE validation set: data.py draws the val_size images from the
  whole pool before the training subset, so the val set does not change with the candidate;
- the test set is never evaluated: the run configs say data.test_subset 0 (an empty test split)
  and runtime.test_every 0; a run whose metrics.json has a test accuracy stops the script.
Write the winner into `laptop:` in params.yaml by hand; the table goes to docs/.

    python benchmarks/calibrate_laptop.py [--configfile workflow/configs/cifar10-jpeg.yaml]
        [--config KEY=VALUE ...] [--budget 30000] [--subsets 3000 5000 6000 7500]
        [--lr-factors 1] [--seeds 2] [--jobs 2] [--out results/calibration]
        [--table docs/laptop-calibration.md]

Each run is a normal run of the trainer (python -m normrepro.train) under OUT/<candidate>/.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from normrepro import config, grid
from normrepro.io_utils import atomic_write_json, atomic_write_text, read_json

REPO = Path(__file__).resolve().parents[1]
STUDY = "batch_sweep"  # the laptop grid's one study
NORM_LABELS = {"bn": "BN", "gn": "GN", "gn_ws": "GN+WS", "ln": "LN", "in": "IN", "bn_ws": "BN+WS"}


class CalibrationError(RuntimeError):
    """A run failed, or evaluated the test set (which calibration must never do)."""


def norm_label(cfg: dict) -> str:
    """BN, GN (G=8), GN+WS (G=8): the study's variant as the tables name it."""
    label = NORM_LABELS.get(cfg["norm"], cfg["norm"])
    groups = cfg["norm_kw"].get("groups")
    return f"{label} (G={groups})" if groups else label


def normal_batch_runs(params: dict) -> list[dict]:
    """One run config per norm of the study: its largest (normal) batch size, seed 0."""
    runs = grid.study_runs(params, STUDY)
    largest = max(r["batch_size"] for r in runs)
    return [r for r in runs if r["batch_size"] == largest and r["seed"] == 0]


def candidates(budget: int, subsets: list[int], lr_factors: list[float]) -> list[dict]:
    """Subset size x epochs at (about) `budget` image-epochs, crossed with lr factors."""
    out = []
    for subset in subsets:
        epochs = max(1, round(budget / subset))
        for factor in lr_factors:
            name = f"n{subset}-e{epochs}" + (f"-lrx{factor:g}" if len(lr_factors) > 1 else "")
            out.append(
                {"name": name, "train_subset": subset, "epochs": epochs, "lr_factor": factor}
            )
    return out


def candidate_runs(bases: list[dict], cand: dict, seeds: int, recipe: dict, threads: int):
    """The run configs of one candidate: every norm x seeds 0..seeds-1, no test set."""
    runs = []
    for base in bases:
        for seed in range(seeds):
            cfg = copy.deepcopy(base)
            cfg["data"]["train_subset"] = cand["train_subset"]
            cfg["data"]["test_subset"] = 0  # an empty test split: no test image is evaluated
            cfg["runtime"].update(test_every=0, threads=threads)
            cfg["epochs"] = cand["epochs"]
            if cfg["optim"].get("milestones"):  # the seed's milestones, scaled to the epochs
                cfg["optim"]["milestones"] = grid.scaled_milestones(
                    recipe["optim"]["milestones"], cand["epochs"], recipe["epochs"]
                )
            cfg["lr"] = base["lr"] * cand["lr_factor"]
            cfg["seed"] = seed
            cfg["study"] = "calibration"
            cfg["run_id"] = f"{base['run_id'].rsplit('-s', 1)[0]}-s{seed}"
            cfg["config_hash"] = config.config_hash(cfg)
            runs.append(cfg)
    return runs


def subprocess_trainer(argv: list[str]) -> int:
    """The trainer in a process of its own (what the grid runs); its log goes to RUN_DIR."""
    cmd = [sys.executable, "-m", "normrepro.train", *argv]
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def train_one(cfg: dict, run_dir: Path, trainer: Callable[[list[str]], int]) -> dict:
    """Train one run; its row: candidate, norm, seed, final val accuracy, wall time."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", cfg)
    t0 = time.perf_counter()
    code = trainer(
        ["--config", str(run_dir / "run.json"), "--out", str(run_dir), "--device", "cpu"]
    )
    metrics_path = run_dir / "metrics.json"
    if code != 0 or not metrics_path.is_file():
        raise CalibrationError(f"run {run_dir} failed (exit {code}); see {run_dir / 'train.log'}")
    metrics = read_json(metrics_path)
    if metrics.get("test_acc") is not None or metrics.get("test_loss") is not None:
        raise CalibrationError(f"run {run_dir} evaluated the test set: calibration must not")
    return {
        "candidate": run_dir.parent.name,
        "norm": norm_label(cfg),
        "seed": cfg["seed"],
        "status": metrics["status"],
        "val_acc": metrics["val_acc"],  # the last epoch's, as the grid reports the test set
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def spread(values: list[float]) -> dict:
    """Mean, sample sd (0 for one value), min and max."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize(rows: list[dict], cands: list[dict]) -> list[dict]:
    """Per candidate: the criterion `norm_mean` (the mean over norms of each norm's mean final
    val accuracy: every norm weighs the same), the spread over all its runs and per norm. A
    diverged run counts with its last finite epoch's val accuracy (0 if none) and is counted."""
    out = []
    for cand in cands:
        mine = [r for r in rows if r["candidate"] == cand["name"]]
        norms = list(dict.fromkeys(r["norm"] for r in mine))
        per_norm = {n: spread([r["val_acc"] or 0.0 for r in mine if r["norm"] == n]) for n in norms}
        out.append(
            {
                **cand,
                "norm_mean": statistics.fmean(s["mean"] for s in per_norm.values()),
                "all": spread([r["val_acc"] or 0.0 for r in mine]),
                "per_norm": per_norm,
                "seeds": min(s["n"] for s in per_norm.values()),
                "diverged": sum(r["status"] != "ok" for r in mine),
                "wall_s": sum(r["wall_s"] for r in mine),
            }
        )
    return out


def choose(summary: list[dict]) -> dict:
    """The candidate with the best norm-mean validation accuracy (ties: the first listed)."""
    return max(summary, key=lambda s: s["norm_mean"])


def _pct(s: dict) -> str:
    return (
        f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f} ({100 * s['min']:.1f}–{100 * s['max']:.1f})"
    )


def markdown(summary: list[dict], rows: list[dict], meta: dict) -> str:
    """docs/laptop-calibration.md: how it was run, the table, the choice, every run's number."""
    best = choose(summary)
    norms = list(summary[0]["per_norm"])
    head = ["candidate", "train images", "epochs", "image-epochs", "lr", "**norm-mean val %**"]
    head += ["all runs: mean ± sd (min–max)", *[f"{n}: mean ± sd (min–max)" for n in norms]]
    head += ["runs", "wall s"]
    lines = [
        "# Laptop calibration: training-subset size against epochs",
        "",
        f"Written by `{meta['command']}` on {meta['date']}. Data: {meta['data']}. "
        f"Every candidate trains {meta['norms']} at batch {meta['batch']} (the study's normal "
        f"batch), {meta['seeds']} seeds each, for about {meta['budget']:,} training image-epochs. "
        f"All are judged on ONE validation set of {meta['val_size']:,} images, drawn class-balanced "
        f"from the training pool (split_seed {meta['split_seed']}) before any training subset, so "
        "it is the same images for every candidate. The test set is never evaluated (data."
        "test_subset 0: an empty test split; every run's metrics.json has test_acc null).",
        "",
        "Criterion: the mean over the norms of each norm's mean final validation accuracy "
        "(`norm-mean`): it favours no norm, and no BN-vs-GN difference is used. Spread: sd "
        "and min–max over seeds (per norm) and over seeds and norms (all runs).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for s in summary:
        cells = [s["name"], f"{s['train_subset']:,}", str(s["epochs"])]
        cells += [f"{s['train_subset'] * s['epochs']:,}", f"{meta['lr'] * s['lr_factor']:g}"]
        cells += [f"**{100 * s['norm_mean']:.1f}**", _pct(s["all"])]
        cells += [_pct(s["per_norm"][n]) for n in norms]
        cells += [f"{s['all']['n']}" + (f" ({s['diverged']} diverged)" if s["diverged"] else "")]
        cells += [f"{s['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Chosen: **{best['name']}** ({best['train_subset']:,} training images x "
              f"{best['epochs']} epochs, lr x {best['lr_factor']:g}), norm-mean val "
              f"{100 * best['norm_mean']:.1f} %.", "", "Every run (final val accuracy %):", "",
              "| candidate | norm | seed | status | val % | wall s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        acc = "—" if r["val_acc"] is None else f"{100 * r['val_acc']:.1f}"
        lines.append(f"| {r['candidate']} | {r['norm']} | {r['seed']} | {r['status']} | {acc} | "
                     f"{r['wall_s']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def load_laptop_params(configfiles: list[str], overrides: list[str]) -> dict:
    """params.yaml at laptop scale, with YAML overlays (as Snakemake's --configfile) and
    KEY=VALUE overrides on top."""
    top: dict = {"scale": "laptop"}
    for path in configfiles:
        top = config.deep_merge(top, yaml.safe_load(Path(path).read_text()) or {})
    top = config.deep_merge(top, config.parse_overrides(overrides))
    return config.load_params(REPO / "params.yaml", top)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", action="append", default=[], help="YAML overlay(s)")
    ap.add_argument("--config", nargs="*", default=[], help="params overrides (KEY=VALUE)")
    ap.add_argument("--budget", type=int, help="image-epochs per run (default: the preset's)")
    ap.add_argument("--subsets", type=int, nargs="+", default=[3000, 5000, 6000, 7500])
    ap.add_argument("--lr-factors", type=float, nargs="+", default=[1.0])
    ap.add_argument("--seeds", type=int, default=2, help="seeds per norm and candidate (>= 2)")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    ap.add_argument("--out", default=str(REPO / "results/calibration"))
    ap.add_argument("--table", default=str(REPO / "docs/laptop-calibration.md"))
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error(f"--seeds: got {args.seeds}; allowed: >= 2 (a spread needs two seeds)")
    return args


def main(argv: list[str] | None = None, trainer=subprocess_trainer) -> int:
    args = parse_args(argv)
    params = load_laptop_params(args.configfile, args.config)
    bases = normal_batch_runs(params)
    preset = params["laptop"]
    budget = args.budget or preset["data"]["train_subset"] * preset["epochs"]
    cands = candidates(budget, args.subsets, args.lr_factors)
    recipe = params["recipes"][params["studies"][STUDY]["recipe"]]
    todo = [(cfg, Path(args.out) / c["name"] / cfg["run_id"]) for c in cands
            for cfg in candidate_runs(bases, c, args.seeds, recipe, args.threads)]  # fmt: skip
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: train_one(*job, trainer), todo))
    summary = summarize(rows, cands)
    data = bases[0]["data"]
    meta = {
        "command": "python benchmarks/calibrate_laptop.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "data": f"{data['name']}" + (f" ({data['root']})" if data["name"] == "imagefolder" else ""),
        "norms": ", ".join(norm_label(b) for b in bases),
        "batch": bases[0]["batch_size"],
        "seeds": args.seeds,
        "budget": budget,
        "val_size": data["val_size"],
        "split_seed": data["split_seed"],
        "lr": bases[0]["lr"],
    }
    text = markdown(summary, rows, meta)
    atomic_write_text(args.table, text)
    atomic_write_json(Path(args.out) / "calibration.json", {"rows": rows, "summary": summary})
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
