"""Train one run: python src/train.py --config RUN.json --out RUN_DIR [--device auto|cpu|cuda]

Or a pack of runs of one cell (configs equal but for the seed), trained together as one fused
model (packing.py): --config A.json --out A_DIR --config B.json --out B_DIR ... Each run's
RUN_DIR is exactly what it would be trained alone; one run is a pack of one (the same code).
RUN.json is a resolved run config (grid.py writes them, run_config.py checks them).

This file reads top to bottom as a run goes: the command line, the configs loaded and checked
(nothing is written for a bad one), the data (on the device as uint8 tensors, augmented in
batches: data.py, augment.py), the models (each seeded as its run alone), the resume from each
run's checkpoint (checkpoint.py), the epoch loop with its evaluation (loop.py), metrics.json.
RUN_DIR receives:
  config.json     the resolved config (run_config defaults filled in)
  history.tsv     one row per epoch, HISTORY_COLUMNS; rewritten whole (atomically) every epoch
  train.log       the log, also on stderr
  checkpoint.pt   the last epoch (checkpoint.prev.pt the one before); a rerun resumes from it
  metrics.json    written last: status "ok" | "diverged" and the final numbers (see finish())
Exit codes: 0 trained, diverged or already done; 2 bad config (RUN_DIR untouched); 1 a crash
(no metrics.json). Accuracies are fractions in [0, 1]; epochs are counted from 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from normrepro import checkpoint, data, gpu_slots, runs
from normrepro.augment import batches_per_epoch
from normrepro.checkpoint import HISTORY_COLUMNS, best_val
from normrepro.gitinfo import git
from normrepro.io_utils import atomic_write_json, read_json
from normrepro.loop import DEVICE_SWITCHES, EpochLoop, Member, drop_last_batch, packs, train_pack
from normrepro.models import build_model
from normrepro.norms import format_norm_layer_groups, norm_layer_groups
from normrepro.run_config import resolve_run_config
from normrepro.runs import cell_difference, finished

# Imported from here by tests and benchmarks (the epoch loop lives in loop.py).
__all__ = ["DEVICE_SWITCHES", "HISTORY_COLUMNS", "EpochLoop", "cpu_name", "main"]


class ConfigError(ValueError):
    """The run config cannot be trained; raised before RUN_DIR is touched."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", required=True, type=Path, action="append",
        help="resolved run config (RUN.json); repeated with --out for each run of a pack",
    )  # fmt: skip
    ap.add_argument(
        "--out", required=True, type=Path, action="append",
        help="run directory (RUN_DIR), one per --config, in the same order",
    )  # fmt: skip
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args(argv)
    if len(args.config) != len(args.out):
        ap.error(
            f"--config is given {len(args.config)} times and --out {len(args.out)} times; "
            "allowed: one --out per --config"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    where = args.config[0]  # the config an error is about
    try:
        cfgs = []
        for where in args.config:
            cfgs.append(load_config(where))
        where = " ".join(map(str, args.config))
        check_pack(cfgs, args.out)
        gpu_slots.claim_for_job(args.device)  # a GPU of its own, before CUDA initialises
        device = pick_device(args.device)
        todo = []
        for cfg, out in zip(cfgs, args.out, strict=True):
            if already_done(out, cfg["config_hash"]):
                print(f"already done: {out / 'metrics.json'} (config_hash {cfg['config_hash']})")
            else:
                todo.append((cfg, out))
        if not todo:
            return 0
        # The runs' locks, held while this process lives: readers see the runs as running.
        tag = len(todo) > 1  # a pack's job log tags each line with its run
        with runs.hold(*[out for _, out in todo]), contextlib.ExitStack() as logs:
            members = [(c, o, logs.enter_context(run_logger(c["run_id"] if tag else None)))
                       for c, o in todo]  # fmt: skip
            return train(members, device, started)
    except ConfigError as err:
        print(f"train.py: bad config {where}: {err}", file=sys.stderr)
        return 2
    except data.DataError as err:  # says where it looked and how to get the data
        print(f"train.py: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, read-only results: name the file, earlier files intact
        print(f"train.py: cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return 1


def load_config(path: Path) -> dict:
    try:
        return resolve_run_config(read_json(path))
    except (OSError, ValueError) as err:  # unreadable, not JSON, or invalid
        raise ConfigError(err) from None


def check_pack(cfgs: list[dict], outs: list[Path]) -> None:
    """ConfigError unless the runs are one cell (equal configs but for the seed) in distinct
    folders: a pack trains one model, one data set and one schedule for all of them."""
    for cfg in cfgs[1:]:
        diff = cell_difference(cfgs[0], cfg)
        if diff:
            raise ConfigError(
                f"runs packed together must differ only in their seed; config key {diff!r} is "
                f"{cfgs[0][diff]!r} in run {cfgs[0]['run_id']} and {cfg[diff]!r} in run "
                f"{cfg['run_id']}; allowed: runs of one cell"
            )
    for values, what in ((outs, "--out"), ([c["seed"] for c in cfgs], "seed")):
        if len(set(values)) != len(values):
            raise ConfigError(f"{what} repeats in the pack ({', '.join(map(str, values))})")


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available here; use --device auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def already_done(run_dir: Path, config_hash: str) -> bool:
    return finished(run_dir, config_hash)


@contextlib.contextmanager
def run_logger(run_id: str | None = None):
    """Log to stderr now, and to RUN_DIR/train.log once add_log_file is called. run_id: one run
    of a pack, whose stderr lines (the pack's job log) are tagged with it."""
    log = logging.getLogger("normrepro.train" + (f".{run_id}" if run_id else ""))
    log.setLevel(logging.INFO)
    log.propagate = False
    add_log_file(log, None, run_id)
    try:
        yield log
    finally:
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()


def add_log_file(log: logging.Logger, path: Path | None, tag: str | None = None) -> None:
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    tag = f"[{tag}] " if tag else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(message)s"))
    log.addHandler(handler)


def train(todo: list[tuple[dict, Path, logging.Logger]], device: torch.device, started) -> int:
    """Train the runs of one cell (check_pack), each into its RUN_DIR; one run is a pack of 1."""
    cfg = todo[0][0]  # what the runs share: everything but the seed
    setup_runtime(cfg["runtime"], device)
    splits = data.load_splits(cfg["data"], device)
    n_train = len(splits.train)
    if cfg["batch_size"] > n_train:
        raise ConfigError(
            f"config key 'batch_size' = {cfg['batch_size']} is not allowed; allowed: at most "
            f"the {n_train} training images (data.train_subset)"
        )
    members = [new_member(c, out, log, splits, device) for c, out, log in todo]

    # Only now, with configs known to be trainable, are the RUN_DIRs created or changed.
    for m in members:
        m.run_dir.mkdir(parents=True, exist_ok=True)
        add_log_file(m.log, m.run_dir / "train.log")
        (m.run_dir / "metrics.json").unlink(missing_ok=True)  # stale: another config, a failure
        atomic_write_json(m.run_dir / "config.json", m.cfg)
    steps = batches_per_epoch(n_train, cfg["batch_size"], drop_last_batch(cfg, n_train))
    for m in members:
        m.log.info(
            "run %s/%s | %s %s %d params | %d train / %d val / %d test images, %d steps/epoch | "
            "device %s | config_hash %s",
            m.cfg["study"], m.cfg["run_id"], m.cfg["model"], m.cfg["norm"], m.n_params, n_train,
            len(splits.val), len(splits.test), steps, gpu_slots.describe(device),
            m.cfg["config_hash"],
        )  # fmt: skip
        # (C, G) of every norm layer: a "gn" that is IN (C == G) on some layers shows here.
        groups = format_norm_layer_groups(norm_layer_groups(m.model))
        m.log.info("norm layers (channels/groups): %s", groups)
        checkpoint.resume(m)

    # Runs that resume from the same epoch train as one pack (after a kill of a pack: all), to
    # the last epoch (loop.py); then each run's metrics.json.
    for start in sorted({len(m.history) for m in members}):
        for group, pack in packs([m for m in members if len(m.history) == start]):
            train_pack(group, pack, splits, device, started)
            for m in group:
                m.totals["wall_s"] = m.wall_before + time.perf_counter() - started
                finish(m.run_dir, m.cfg, m.history, m.totals, m.diverged_epoch, m.n_params,
                       device, m.log, split_sizes(splits))  # fmt: skip
    return 0


def setup_runtime(runtime: dict, device: torch.device) -> None:
    if runtime["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by cuBLAS
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not runtime["deterministic"]
        torch.backends.cudnn.deterministic = runtime["deterministic"]
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    else:
        torch.set_num_threads(runtime["threads"] or env_threads() or os.cpu_count() or 1)


def env_threads() -> int | None:
    """The job's thread count: Snakemake sets OMP_NUM_THREADS to a rule's `threads`."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def new_member(cfg: dict, run_dir: Path, log, splits, device: torch.device) -> Member:
    """Build the run's model exactly as the run alone does: its seed, then the init code."""
    torch.manual_seed(cfg["seed"])  # model init (CPU and CUDA)
    try:
        model = build_model(
            cfg["model"], cfg["norm"], splits.num_classes, splits.in_channels,
            **cfg["model_kw"], **cfg["norm_kw"],
        )  # fmt: skip
    except (TypeError, ValueError) as err:  # an unknown or bad model_kw / norm_kw value
        raise ConfigError(err) from None
    if device.type == "cpu":  # dropout goes on where the init left the seeded CPU RNG
        model_gen = torch.Generator().set_state(torch.get_rng_state())
    else:  # the init ran on the CPU: the device's RNG is as the seed left it
        model_gen = torch.Generator(device).manual_seed(cfg["seed"])
    data_gen = torch.Generator(device).manual_seed(cfg["seed"])
    return Member(cfg, run_dir, log, model, data_gen, model_gen)


def split_sizes(splits) -> dict[str, int]:
    """The images each split held as loaded (n_train: the images trained on): the report's
    captions print these, not the config's request."""
    return {f"n_{k}": len(getattr(splits, k)) for k in ("train", "val", "test")}


def finish(run_dir, cfg, history, totals, diverged_epoch, n_params, device, log, sizes=None):
    """Write metrics.json: the last finite epoch's numbers (null if none), the split sizes as
    loaded (split_sizes), and provenance."""
    last = history[-1] if history else {}
    best_acc, best_epoch = best_val(history)
    metrics = {
        "status": "diverged" if diverged_epoch else "ok",
        "diverged_epoch": diverged_epoch,
        **{k: last.get(k) for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
        **{k: last.get(k) for k in ("test_loss", "test_acc")},
        "best_val_acc": best_acc,
        "best_epoch": best_epoch,
        "epochs_done": len(history),
        "wall_s": round(totals["wall_s"], 3),
        "images_per_sec": totals["train_images"] / max(totals["train_seconds"], 1e-9),
        **environment(device),
        "n_params": n_params,
        **(sizes or {}),
        "config_hash": cfg["config_hash"],
        "run_id": cfg["run_id"],
        "study": cfg["study"],
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    runs.write_metrics(run_dir, metrics)
    test_acc = last.get("test_acc")
    tested = test_acc is not None and math.isfinite(test_acc)
    log.info(
        "done: %s after %d epochs, test acc %s, %.0f img/s, %.1f s",
        metrics["status"], len(history), test_acc if tested else "not evaluated",
        metrics["images_per_sec"], metrics["wall_s"],
    )  # fmt: skip


def environment(device: torch.device) -> dict:
    """What produced the numbers: device, versions and the code's git revision."""
    cuda = device.type == "cuda"
    rev = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        **({"gpu": gpu_slots.job_gpu()} if cuda else {}),  # which GPU of the machine
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "git_rev": rev,
        "git_dirty": None if rev is None or dirty is None else bool(dirty),
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


if __name__ == "__main__":
    sys.exit(main())
