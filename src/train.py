"""Train one run: python src/train.py --config RUN.json --out RUN_DIR [--device auto|cpu|cuda]

RUN.json is a resolved run config (src/grid.py writes them, src/run_config.py checks them).
The data lives on the device as uint8 tensors, augmented in batches (src/data.py, src/augment.py).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import data
import gpu_slots
import run_status
from augment import batches_per_epoch, iterate_batches, make_batch_transform
from checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from gitinfo import git
from grid import finished_hash
from io_utils import atomic_write_json, atomic_write_text, read_json
from models import build_model
from norms import format_norm_layer_groups, norm_layer_groups
from optim import adaptive_clip_grad_, clipped_params, lr_at, make_optimizer, set_lr
from run_config import resolve_run_config

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
HISTORY_COLUMNS += ("test_loss", "test_acc", "seconds")
CUDA_CHECK_EVERY = 50  # CUDA: steps between non-finite loss checks (each one syncs the GPU)


class ConfigError(ValueError):
    """The run config cannot be trained; raised before RUN_DIR is touched."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, type=Path, help="resolved run config (RUN.json)")
    ap.add_argument("--out", required=True, type=Path, help="run directory (RUN_DIR)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        cfg = load_config(args.config)
        gpu_slots.claim_for_job(args.device)  # a GPU of its own, before CUDA initialises
        device = pick_device(args.device)
        if already_done(args.out, cfg["config_hash"]):
            print(f"already done: {args.out / 'metrics.json'} (config_hash {cfg['config_hash']})")
            return 0
        # The run's lock, held while this process lives: readers see the run as running.
        with run_status.hold(args.out), run_logger() as log:
            return train(cfg, args.out, device, log, started)
    except ConfigError as err:
        print(f"train.py: bad config {args.config}: {err}", file=sys.stderr)
        return 2
    except data.DataError as err:  # says where it looked and how to get the data
        print(f"train.py: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, read-only results: name the file, earlier files intact
        print(f"train.py: cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def run_logger():
    """Log to stderr now, and to RUN_DIR/train.log once add_log_file is called."""
    log = logging.getLogger("normrepro.train")
    log.setLevel(logging.INFO)
    log.propagate = False
    add_log_file(log, None)
    try:
        yield log
    finally:
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()


def add_log_file(log: logging.Logger, path: Path | None) -> None:
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)


def load_config(path: Path) -> dict:
    try:
        return resolve_run_config(read_json(path))
    except (OSError, ValueError) as err:  # unreadable, not JSON, or invalid
        raise ConfigError(err) from None


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available here; use --device auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def already_done(run_dir: Path, config_hash: str) -> bool:
    return finished_hash(run_dir / "metrics.json") == config_hash


def train(
    cfg: dict, run_dir: Path, device: torch.device, log: logging.Logger, started: float
) -> int:
    runtime, opt_cfg = cfg["runtime"], cfg["optim"]
    setup_runtime(runtime, device)
    torch.manual_seed(cfg["seed"])  # model init and dropout (CPU and CUDA)
    gen = torch.Generator(device).manual_seed(cfg["seed"])  # shuffling and augmentation

    splits = data.load_splits(cfg["data"], device)
    n_train = len(splits.train)
    if cfg["batch_size"] > n_train:
        raise ConfigError(
            f"config key 'batch_size' = {cfg['batch_size']} is not allowed; allowed: at most "
            f"the {n_train} training images (data.train_subset minus data.val_size)"
        )
    try:
        model = build_model(
            cfg["model"], cfg["norm"], splits.num_classes, splits.in_channels,
            **cfg["model_kw"], **cfg["norm_kw"],
        )  # fmt: skip
    except (TypeError, ValueError) as err:  # an unknown or bad model_kw / norm_kw value
        raise ConfigError(err) from None

    # Only now, with a config known to be trainable, is RUN_DIR created or changed.
    run_dir.mkdir(parents=True, exist_ok=True)
    add_log_file(log, run_dir / "train.log")
    (run_dir / "metrics.json").unlink(missing_ok=True)  # stale: another config, or a failure
    atomic_write_json(run_dir / "config.json", cfg)

    # CUDA-only speedups; on the CPU the same code runs with them switched off.
    cuda = device.type == "cuda"
    channels_last = cuda and runtime["channels_last"]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=cuda and runtime["bf16"])
    aug, norm = cfg["augment"], cfg["normalize"]
    eval_tf = make_batch_transform(aug, norm, splits, train=False, memory_format=memory_format)
    # A last training batch of one image gives BatchNorm a one-sample batch: drop it (for every
    # norm, so that norms are compared on the same batches). Other remainders are trained on.
    drop_last = n_train % cfg["batch_size"] == 1 and cfg["batch_size"] > 1
    steps = batches_per_epoch(n_train, cfg["batch_size"], drop_last)
    optimizer = make_optimizer(model, cfg["lr"], opt_cfg)
    loop = EpochLoop(
        model=torch.compile(model) if cuda and runtime["compile"] else model,
        optimizer=optimizer,
        train_set=splits.train,
        transform=make_batch_transform(aug, norm, splits, train=True, memory_format=memory_format),
        generator=gen,
        batch_size=cfg["batch_size"],
        lr=lambda epoch, step: lr_at(opt_cfg, cfg["lr"], cfg["epochs"], epoch, step, steps),
        drop_last=drop_last,
        label_smoothing=opt_cfg["label_smoothing"],
        agc=opt_cfg["agc"],
        autocast=autocast,
        check_every=CUDA_CHECK_EVERY if cuda else 1,  # a CPU check costs nothing: every step
        log_every=runtime["log_every"],
    )
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "run %s/%s | %s %s %d params | %d train / %d val / %d test images, %d steps/epoch | "
        "device %s | config_hash %s",
        cfg["study"], cfg["run_id"], cfg["model"], cfg["norm"], n_params, n_train,
        len(splits.val), len(splits.test), steps, gpu_slots.describe(device), cfg["config_hash"],
    )  # fmt: skip
    # (C, G) of every norm layer: a "gn" that is IN (C == G) on some layers shows here.
    log.info("norm layers (channels/groups): %s", format_norm_layer_groups(norm_layer_groups(model)))

    # Resume: model, optimizer, RNGs and history as they were at the end of the last good epoch.
    history: list[dict] = []
    totals = {"train_images": 0, "train_seconds": 0.0, "wall_s": 0.0}  # over all attempts
    state = load_checkpoint(run_dir, cfg["config_hash"], log)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], gen)
        history, totals = state["history"], state["totals"]
    write_history(run_dir, history)  # drops rows of an epoch that never reached a checkpoint
    wall_before = totals["wall_s"]

    diverged_epoch = None
    for epoch in range(len(history), cfg["epochs"]):
        t0 = time.perf_counter()
        train_loss, train_acc, n_seen, lr = loop.run_epoch(epoch, log)
        train_seconds = time.perf_counter() - t0
        val_loss = val_acc = test_loss = test_acc = math.nan
        # The test set every `test_every` epochs and after the last (a 10k-image pass costs as
        # much as a small training epoch on a CPU); the val split, which picks best_val, always.
        every = runtime["test_every"]
        test_now = epoch + 1 == cfg["epochs"] or (every > 0 and (epoch + 1) % every == 0)
        if math.isfinite(train_loss):
            eval_bs = cfg["eval_batch_size"]
            val_loss, val_acc = evaluate(model, splits.val, eval_tf, eval_bs, autocast)
            if test_now:
                test_loss, test_acc = evaluate(model, splits.test, eval_tf, eval_bs, autocast)
        if not math.isfinite(train_loss) or (test_now and not math.isfinite(test_loss)):
            diverged_epoch = epoch + 1
            log.warning("epoch %d: the loss is not finite: diverged, stopping", diverged_epoch)
            break
        row = {
            "epoch": epoch + 1,
            "lr": lr,  # of the epoch's last step
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        history.append(row)
        totals = {
            "train_images": totals["train_images"] + n_seen,
            "train_seconds": totals["train_seconds"] + train_seconds,
            "wall_s": wall_before + time.perf_counter() - started,
        }
        save_checkpoint(
            run_dir,
            {
                "config_hash": cfg["config_hash"],
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": capture_rng(gen),
                "best_val": best_val(history),
                "history": history,
                "totals": totals,
            },
        )
        write_history(run_dir, history)
        log.info(
            "epoch %d/%d lr %.4g | train loss %.4f acc %.4f | val loss %.4f acc %.4f | "
            "test loss %.4f acc %.4f | %.1f s, %.0f img/s",
            epoch + 1, cfg["epochs"], lr, train_loss, train_acc, val_loss, val_acc,
            test_loss, test_acc, row["seconds"], n_seen / train_seconds,
        )  # fmt: skip

    totals["wall_s"] = wall_before + time.perf_counter() - started
    finish(run_dir, cfg, history, totals, diverged_epoch, n_params, device, log)
    return 0


@dataclass
class EpochLoop:
    """The training loop: one step, and one epoch of steps (benchmarks/ time it as it is)."""

    model: nn.Module  # what a step calls (torch.compile'd on CUDA when runtime.compile)
    optimizer: torch.optim.Optimizer
    train_set: data.TensorSet  # uint8 images on the device
    transform: Callable  # (uint8 batch, generator) -> float32 batch, normalized and augmented
    generator: torch.Generator  # shuffling and augmentation, on the data's device
    batch_size: int
    lr: Callable[[int, int], float]  # (epoch, step) -> lr of that step
    drop_last: bool = False
    label_smoothing: float = 0.0
    agc: dict | None = None  # {"clip", "eps"}: adaptive gradient clipping
    autocast: Any = field(default_factory=contextlib.nullcontext)
    check_every: int = 1  # steps between non-finite loss checks
    log_every: int = 0  # steps between running-loss log lines (0: none)

    def __post_init__(self):
        module = getattr(self.model, "_orig_mod", self.model)  # under torch.compile
        self.agc_params = clipped_params(module) if self.agc else []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on a float batch x [B, C, H, W]; returns (loss, logits [B, classes])."""
        with self.autocast:
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.agc_params:
            adaptive_clip_grad_(self.agc_params, **self.agc)
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def run_epoch(self, epoch: int, log: logging.Logger | None = None):
        """Train one epoch: (mean loss, accuracy, images, lr of the last step). It stops at the
        first non-finite loss seen; the mean loss is then not finite."""
        self.model.train()
        device = self.train_set.x.device
        loss_sum = torch.zeros((), device=device)  # sums over images: no host sync per step
        correct = torch.zeros((), device=device, dtype=torch.long)
        n_seen = 0
        steps = batches_per_epoch(len(self.train_set), self.batch_size, self.drop_last)
        batches = iterate_batches(
            self.train_set, self.batch_size, True, self.generator, self.drop_last
        )
        tty = sys.stderr.isatty()
        for step, (xb, yb) in enumerate(tqdm(batches, total=steps, leave=False, disable=not tty)):
            lr = self.lr(epoch, step)
            set_lr(self.optimizer, lr)
            loss, logits = self.step(self.transform(xb, self.generator), yb)
            loss_sum += loss * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            n_seen += len(yb)
            if (step + 1) % self.check_every == 0 and not torch.isfinite(loss_sum):
                break
            if log and self.log_every and (step + 1) % self.log_every == 0:
                log.info("epoch %d step %d/%d loss %.4f", epoch + 1, step + 1, steps, loss.item())
        if device.type == "cuda":
            torch.cuda.synchronize()  # the epoch's time includes its queued GPU work
        return loss_sum.item() / n_seen, correct.item() / n_seen, n_seen, lr


@torch.inference_mode()
def evaluate(model: nn.Module, tset, transform, batch_size: int, autocast) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a TensorSet, in eval mode; NaN for an empty set."""
    if len(tset) == 0:
        return math.nan, math.nan
    model.eval()
    loss_sum = torch.zeros((), device=tset.x.device)
    correct = torch.zeros((), device=tset.x.device, dtype=torch.long)
    for xb, yb in iterate_batches(tset, batch_size, shuffle=False):
        with autocast:
            logits = model(transform(xb))
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    return loss_sum.item() / len(tset), correct.item() / len(tset)


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


def best_val(history: list[dict]) -> tuple[float | None, int | None]:
    """(best val accuracy, its epoch); the earliest epoch on ties; (None, None) without val."""
    rows = [r for r in history if math.isfinite(r["val_acc"])]
    if not rows:
        return None, None
    best = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))
    return best["val_acc"], best["epoch"]


def write_history(run_dir: Path, history: list[dict]) -> None:
    # repr() keeps every float exactly, so a resumed run's file equals an uninterrupted one's
    lines = ["\t".join(HISTORY_COLUMNS)]
    lines += ["\t".join(repr(row[c]) for c in HISTORY_COLUMNS) for row in history]
    atomic_write_text(run_dir / "history.tsv", "\n".join(lines) + "\n")


def finish(run_dir, cfg, history, totals, diverged_epoch, n_params, device, log) -> None:
    """Write metrics.json: the last finite epoch's numbers (null if none), and provenance."""
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
        "config_hash": cfg["config_hash"],
        "run_id": cfg["run_id"],
        "study": cfg["study"],
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    log.info(
        "done: %s after %d epochs, test acc %s, %.0f img/s, %.1f s",
        metrics["status"], len(history), last.get("test_acc"), metrics["images_per_sec"],
        metrics["wall_s"],
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
