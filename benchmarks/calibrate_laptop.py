"""Calibrate the laptop preset on BN at the largest batch size alone, at a fixed compute budget.

The laptop scale has to fit about an hour of 2 CPU cores, i.e. a fixed number of training
image-epochs per run. Within it, this script trades training-subset size against epochs and
tries two peak learning rates, on ONE cell only: batch_sweep's BN run at its largest batch
size, seed 0. It picks the candidate with the best final validation accuracy (the val split,
never the test set, and never a BN-vs-GN difference: GN is not run here). Write the winner into
`laptop:` in params.yaml by hand; the README records the table.

    python benchmarks/calibrate_laptop.py [--config data.name=imagefolder ...] [--jobs 2]

Each candidate is a normal run (src/train.py) under results/calibration/<name>/.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from normrepro import grid
from normrepro.io_utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]

SUBSETS = (3000, 5000, 8000)  # training-subset sizes tried (val is carved out of each)
LR_FACTORS = (1.0, 2.0)  # x the recipe's linearly scaled lr


def candidates(base: dict, recipe: dict) -> list[dict]:
    """Configs with the same image-epoch budget as the preset (train images x epochs)."""
    val = base["data"]["val_size"]
    budget = (base["data"]["train_subset"] - val) * base["epochs"]
    out = []
    for subset in SUBSETS:
        epochs = max(1, round(budget / (subset - val)))
        for factor in LR_FACTORS:
            cfg = copy.deepcopy(base)
            cfg["data"]["train_subset"] = subset
            cfg["epochs"] = epochs
            milestones = recipe["optim"]["milestones"]  # the seed's, for the recipe's epochs
            cfg["optim"]["milestones"] = grid._scaled_milestones(
                milestones, epochs, recipe["epochs"]
            )
            cfg["lr"] = base["lr"] * factor
            cfg["study"] = "calibration"
            cfg["run_id"] = f"n{subset}-e{epochs}-lr{cfg['lr']:g}"
            cfg["config_hash"] = grid.config_hash(cfg)
            out.append(cfg)
    return out


def run(cfg: dict, root: Path) -> dict:
    out = root / cfg["run_id"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run.json", cfg)
    t0 = time.perf_counter()
    cmd = [sys.executable, str(REPO / "src/train.py"), "--config", str(out / "run.json")]
    cmd += ["--out", str(out), "--device", "auto"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "run": cfg["run_id"],
        "train_images": cfg["data"]["train_subset"] - cfg["data"]["val_size"],
        "epochs": cfg["epochs"],
        "lr": cfg["lr"],
        "val_acc": metrics["val_acc"],
        "best_val_acc": metrics["best_val_acc"],
        "test_acc": metrics["test_acc"],
        "wall_s": round(time.perf_counter() - t0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="*", default=[], help="params overrides (KEY=VALUE)")
    ap.add_argument("--jobs", type=int, default=2, help="candidates trained at once")
    ap.add_argument("--out", default=str(REPO / "results/calibration"))
    args = ap.parse_args(argv)
    overrides = grid.deep_merge({"scale": "laptop"}, grid.parse_overrides(args.config))
    params = grid.load_params(REPO / "params.yaml", overrides)
    runs = grid.study_runs(params, "batch_sweep")
    largest = max(r["batch_size"] for r in runs)
    base = next(r for r in runs if r["norm"] == "bn" and r["batch_size"] == largest)
    with ThreadPoolExecutor(args.jobs) as pool:
        recipe = params["recipes"][params["studies"]["batch_sweep"]["recipe"]]
        rows = list(pool.map(lambda c: run(c, Path(args.out)), candidates(base, recipe)))
    cols = list(rows[0])
    print("\t".join(cols))
    for r in rows:
        print("\t".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    best = max(rows, key=lambda r: r["val_acc"])
    print(f"chosen on final val accuracy (BN, batch {largest}, seed 0): {best['run']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
