"""Train one run: python src/train.py --config RUN.json --out RUN_DIR [--device auto|cpu|cuda]

Or a pack of runs of one cell (configs equal but for the seed), trained together as one fused
model (src/packing.py): --config A.json --out A_DIR --config B.json --out B_DIR ... Each run's
RUN_DIR is exactly what it would be trained alone; one run is a pack of one (the same code).
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

from normrepro import data, gpu_slots, run_status
from normrepro.augment import batches_per_epoch, iterate_batches, make_batch_transform
from normrepro.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from normrepro.gitinfo import git
from normrepro.grid import cell_difference, finished_hash
from normrepro.io_utils import atomic_write_json, atomic_write_text, read_json
from normrepro.models import build_model
from normrepro.norms import format_norm_layer_groups, norm_layer_groups
from normrepro.optim import adaptive_clip_grad_, clipped_params, lr_at, make_optimizer, set_lr
from normrepro.packing import PackedModel, PackError, pack_optimizer_states, unpack_optimizer_state
from normrepro.run_config import resolve_run_config

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
HISTORY_COLUMNS += ("test_loss", "test_acc", "seconds")
CUDA_CHECK_EVERY = 50  # CUDA: steps between non-finite loss checks (each one syncs the GPU)
# Runtime switches each device uses where the run config's runtime.<switch> allows it, chosen by
# measurement (benchmarks/pack_throughput.py --switches; README "Packed seeds"): on this
# project's CPU (2 cores) channels_last is 1.06-1.63x faster for ResNet-20. bf16 autocast was
# measured 1.3-2.5x faster there too, but it lowers every CPU run's precision: off until decided.
# torch.compile is off on the CPU (minutes of compiling per job, gain unmeasured). CUDA: the
# seeds' setting (tensor cores, cuDNN NHWC kernels), not measured here (no GPU).
DEVICE_SWITCHES = {
    "cuda": {"channels_last": True, "bf16": True, "compile": True},
    "cpu": {"channels_last": True, "bf16": False, "compile": False},
}


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
        with run_status.hold(*[out for _, out in todo]), contextlib.ExitStack() as logs:
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


@dataclass
class Member:
    """One run of a pack: its config, folder, log, model, RNGs and what it has done so far."""

    cfg: dict
    run_dir: Path
    log: logging.Logger
    model: nn.Module  # built as its run alone builds it (seeded init); resumed weights loaded
    data_gen: torch.Generator  # shuffling and augmentation, seeded with the run's seed
    model_gen: torch.Generator  # dropout: the run's RNG as it is after the model's init
    optimizer_state: dict | None = None  # resumed: the run's own SGD state
    history: list[dict] = field(default_factory=list)
    totals: dict = field(
        default_factory=lambda: {"train_images": 0, "train_seconds": 0.0, "wall_s": 0.0}
    )  # over all attempts
    wall_before: float = 0.0
    diverged_epoch: int | None = None

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def train(todo: list[tuple[dict, Path, logging.Logger]], device: torch.device, started) -> int:
    """Train the runs of one cell (check_pack), each into its RUN_DIR; one run is a pack of 1."""
    cfg = todo[0][0]  # what the runs share: everything but the seed
    setup_runtime(cfg["runtime"], device)
    splits = data.load_splits(cfg["data"], device)
    n_train = len(splits.train)
    if cfg["batch_size"] > n_train:
        raise ConfigError(
            f"config key 'batch_size' = {cfg['batch_size']} is not allowed; allowed: at most "
            f"the {n_train} training images (data.train_subset minus data.val_size)"
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
        resume(m)

    # Runs that resume from the same epoch train as one pack (after a kill of a pack: all).
    for start in sorted({len(m.history) for m in members}):
        train_pack([m for m in members if len(m.history) == start], splits, device, started)
    return 0


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


def resume(m: Member) -> None:
    """Model, optimizer, RNGs and history as they were at the end of the last good epoch."""
    state = load_checkpoint(m.run_dir, m.cfg["config_hash"], m.log)
    if state is not None:
        m.model.load_state_dict(state["model"])
        m.optimizer_state = state["optimizer"]
        restore_rng(state["rng"], m.data_gen, m.model_gen)
        m.history, m.totals = state["history"], state["totals"]
    write_history(m.run_dir, m.history)  # drops rows of an epoch that never reached a checkpoint
    m.wall_before = m.totals["wall_s"]


def drop_last_batch(cfg: dict, n_train: int) -> bool:
    # A last training batch of one image gives BatchNorm a one-sample batch: drop it (for every
    # norm, so that norms are compared on the same batches). Other remainders are trained on.
    return n_train % cfg["batch_size"] == 1 and cfg["batch_size"] > 1


def device_switches(runtime: dict, device: torch.device) -> dict[str, bool]:
    """channels_last, bf16 (autocast), compile: on where the config allows it and the device
    gains from it (DEVICE_SWITCHES)."""
    return {k: runtime[k] and on for k, on in DEVICE_SWITCHES[device.type].items()}


def train_pack(group: list[Member], splits, device: torch.device, started: float) -> None:
    """Train runs that are at the same epoch as one fused model, to the end; write their files."""
    try:
        pack = PackedModel([m.model for m in group], [m.model_gen for m in group])
    except PackError as err:  # a layer that cannot be fused: the runs train one by one
        for m in group:
            m.log.warning("%s; the pack's %d runs train one after another", err, len(group))
        for m in group:
            train_pack([m], splits, device, started)
        return
    cfg, k_runs = group[0].cfg, len(group)
    runtime, opt_cfg = cfg["runtime"], cfg["optim"]
    if k_runs > 1:
        for m in group:
            m.log.info("packed: %d runs trained as one model: %s", k_runs,
                       ", ".join(o.cfg["run_id"] for o in group))  # fmt: skip
    switches = device_switches(runtime, device)
    memory_format = torch.channels_last if switches["channels_last"] else torch.contiguous_format
    pack = pack.to(device, memory_format=memory_format)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=switches["bf16"])
    aug, norm = cfg["augment"], cfg["normalize"]
    eval_tf = make_batch_transform(aug, norm, splits, train=False, memory_format=memory_format)
    n_train = len(splits.train)
    drop_last = drop_last_batch(cfg, n_train)
    steps = batches_per_epoch(n_train, cfg["batch_size"], drop_last)
    optimizer = make_optimizer(pack.net, cfg["lr"], opt_cfg)
    if group[0].optimizer_state is not None:  # resumed (all at one epoch: all have one)
        optimizer.load_state_dict(pack_optimizer_states([m.optimizer_state for m in group]))
    loop = EpochLoop(
        model=torch.compile(pack) if switches["compile"] else pack,
        optimizer=optimizer,
        train_set=splits.train,
        transform=make_batch_transform(aug, norm, splits, train=True, memory_format=memory_format),
        generators=[m.data_gen for m in group],
        batch_size=cfg["batch_size"],
        lr=lambda epoch, step: lr_at(opt_cfg, cfg["lr"], cfg["epochs"], epoch, step, steps),
        drop_last=drop_last,
        label_smoothing=opt_cfg["label_smoothing"],
        agc=opt_cfg["agc"],
        autocast=autocast,
        check_every=CUDA_CHECK_EVERY if device.type == "cuda" else 1,  # a CPU check is free
        log_every=runtime["log_every"],
        logs=[m.log for m in group],
    )
    eval_bs = cfg["eval_batch_size"]
    for epoch in range(len(group[0].history), cfg["epochs"]):
        if not any(loop.active):
            break
        t0 = time.perf_counter()
        train_losses, train_accs, n_seen, lr = loop.run_epoch(epoch)
        train_seconds = time.perf_counter() - t0
        # The test set every `test_every` epochs and after the last (a 10k-image pass costs as
        # much as a small training epoch on a CPU); the val split, which picks best_val, always.
        every = runtime["test_every"]
        test_now = epoch + 1 == cfg["epochs"] or (every > 0 and (epoch + 1) % every == 0)
        nan = [(math.nan, math.nan)] * k_runs
        val = test = nan
        if any(loop.active[k] and math.isfinite(train_losses[k]) for k in range(k_runs)):
            val = evaluate(pack, splits.val, eval_tf, eval_bs, autocast)
            if test_now:
                test = evaluate(pack, splits.test, eval_tf, eval_bs, autocast)
        states = optimizer_states = None  # unpacked once per epoch, when a run saves
        for k, m in enumerate(group):
            if m.diverged_epoch is not None:
                continue
            (val_loss, val_acc), (test_loss, test_acc) = val[k], test[k]
            train_loss = train_losses[k]
            if not math.isfinite(train_loss) or (test_now and not math.isfinite(test_loss)):
                m.diverged_epoch = epoch + 1
                m.log.warning("epoch %d: the loss is not finite: diverged, stopping", epoch + 1)
                loop.stop_member(k)  # the others go on unaffected
                continue
            row = {
                "epoch": epoch + 1,
                "lr": lr,  # of the epoch's last step
                "train_loss": train_loss,
                "train_acc": train_accs[k],
                "val_loss": val_loss,
                "val_acc": val_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            m.history.append(row)
            m.totals = {
                "train_images": m.totals["train_images"] + n_seen,
                "train_seconds": m.totals["train_seconds"] + train_seconds,
                "wall_s": m.wall_before + time.perf_counter() - started,
            }
            if states is None:
                states = pack.member_states()
                optimizer_states = unpack_optimizer_state(optimizer.state_dict(), k_runs)
            save_checkpoint(
                m.run_dir,
                {
                    "config_hash": m.cfg["config_hash"],
                    "epoch": epoch + 1,
                    "model": states[k],
                    "optimizer": optimizer_states[k],
                    "rng": capture_rng(m.data_gen, m.model_gen),
                    "best_val": best_val(m.history),
                    "history": m.history,
                    "totals": m.totals,
                },
            )
            write_history(m.run_dir, m.history)
            m.log.info(
                "epoch %d/%d lr %.4g | train loss %.4f acc %.4f | val loss %.4f acc %.4f | "
                "test loss %.4f acc %.4f | %.1f s, %.0f img/s",
                epoch + 1, cfg["epochs"], lr, train_loss, train_accs[k], val_loss, val_acc,
                test_loss, test_acc, row["seconds"], n_seen / train_seconds,
            )  # fmt: skip

    for m in group:
        m.totals["wall_s"] = m.wall_before + time.perf_counter() - started
        finish(m.run_dir, m.cfg, m.history, m.totals, m.diverged_epoch, m.n_params, device, m.log)


@dataclass
class EpochLoop:
    """The training loop over a pack of K runs (src/packing.py; a single run: K = 1): one step,
    and one epoch of steps (benchmarks/ time it as it is)."""

    model: nn.Module  # a PackedModel (torch.compile'd where compile is on): see step()
    optimizer: torch.optim.Optimizer  # over the packed parameters
    train_set: data.TensorSet  # uint8 images on the device
    transform: Callable  # (uint8 batch, generator) -> float32 batch, normalized and augmented
    generators: list[torch.Generator]  # per run: shuffling and augmentation, on the data's device
    batch_size: int
    lr: Callable[[int, int], float]  # (epoch, step) -> lr of that step
    drop_last: bool = False
    label_smoothing: float = 0.0
    agc: dict | None = None  # {"clip", "eps"}: adaptive gradient clipping, per run
    autocast: Any = field(default_factory=contextlib.nullcontext)
    check_every: int = 1  # steps between non-finite loss checks
    log_every: int = 0  # steps between running-loss log lines (0: none)
    logs: list[logging.Logger] | None = None  # per run

    def __post_init__(self):
        self.pack = getattr(self.model, "_orig_mod", self.model)  # under torch.compile
        self.members = self.pack.members
        if len(self.generators) != self.members:
            raise ValueError(f"{len(self.generators)} generators for a pack of {self.members}")
        self.agc_params = clipped_params(self.pack.net) if self.agc else []
        self.active = [True] * self.members  # False: the run diverged and is left out
        self._in_loss = torch.arange(self.members, device=self.train_set.x.device)

    def stop_member(self, k: int) -> None:
        """Leave run k out from now on (it diverged): out of the loss, its slice frozen."""
        if self.active[k]:
            self.active[k] = False
            self.pack.freeze_member_(k, self.optimizer)
            live = [i for i, a in enumerate(self.active) if a]
            self._in_loss = torch.tensor(live, dtype=torch.long, device=self._in_loss.device)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of every run. x [B, K*C, H, W]: run k's batch in channels k*C..(k+1)*C;
        y [B, K]. The loss is the sum of the runs' mean losses, so each run's gradient is its
        own. Returns (losses [K], logits [B, K, classes])."""
        with self.autocast:
            logits = self.model(x)
        losses = F.cross_entropy(
            logits.float().transpose(1, 2), y, reduction="none",
            label_smoothing=self.label_smoothing,
        ).mean(0)  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        losses.index_select(0, self._in_loss).sum().backward()
        if self.agc_params:
            adaptive_clip_grad_(self.agc_params, **self.agc, members=self.members)
        self.optimizer.step()
        return losses.detach(), logits.detach()

    def batch(self, parts) -> tuple[torch.Tensor, torch.Tensor]:
        """The runs' uint8 batches -> (x [B, K*C, H, W], y [B, K]), each run's augmentation
        drawn from its own generator, as the run alone draws it."""
        xs = [self.transform(xb, g) for (xb, _), g in zip(parts, self.generators, strict=True)]
        x = xs[0] if len(xs) == 1 else torch.cat(xs, 1)
        return x, torch.stack([yb for _, yb in parts], 1)

    def run_epoch(self, epoch: int):
        """Train one epoch: per run mean losses and accuracies (lists of K), images per run, lr
        of the last step. A run stops at its first non-finite loss seen (its mean loss is then
        not finite); the others go on."""
        self.model.train()
        device = self.train_set.x.device
        loss_sum = torch.zeros(self.members, device=device)  # no host sync per step
        correct = torch.zeros(self.members, device=device, dtype=torch.long)
        n_seen = 0
        steps = batches_per_epoch(len(self.train_set), self.batch_size, self.drop_last)
        streams = [
            iterate_batches(self.train_set, self.batch_size, True, g, self.drop_last)
            for g in self.generators
        ]
        bar = tqdm(
            zip(*streams, strict=True), total=steps, leave=False, disable=not sys.stderr.isatty()
        )
        for step, parts in enumerate(bar):
            lr = self.lr(epoch, step)
            set_lr(self.optimizer, lr)
            x, y = self.batch(parts)
            losses, logits = self.step(x, y)
            loss_sum += losses * len(y)
            correct += (logits.argmax(2) == y).sum(0)
            n_seen += len(y)
            if (step + 1) % self.check_every == 0 and not torch.isfinite(loss_sum).all():
                for k, ok in enumerate(torch.isfinite(loss_sum).tolist()):
                    if not ok:
                        self.stop_member(k)
                if not any(self.active):
                    break
            if self.logs and self.log_every and (step + 1) % self.log_every == 0:
                for k, log in enumerate(self.logs):
                    if self.active[k]:
                        log.info("epoch %d step %d/%d loss %.4f", epoch + 1, step + 1, steps,
                                 losses[k].item())  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()  # the epoch's time includes its queued GPU work
        return (loss_sum / n_seen).tolist(), (correct / n_seen).tolist(), n_seen, lr


@torch.inference_mode()
def evaluate(model: nn.Module, tset, transform, batch_size: int, autocast) -> list[tuple]:
    """Per run of the pack: (mean cross-entropy, accuracy) over a TensorSet, in eval mode; NaN
    for an empty set. Every run sees the same images."""
    k_runs = getattr(model, "_orig_mod", model).members
    if len(tset) == 0:
        return [(math.nan, math.nan)] * k_runs
    model.eval()
    loss_sum = torch.zeros(k_runs, device=tset.x.device)
    correct = torch.zeros(k_runs, device=tset.x.device, dtype=torch.long)
    for xb, yb in iterate_batches(tset, batch_size, shuffle=False):
        x = transform(xb)
        with autocast:
            logits = model(x if k_runs == 1 else x.repeat(1, k_runs, 1, 1))  # [B, K, classes]
        y = yb[:, None].expand(-1, k_runs)
        loss_sum += F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").sum(0)
        correct += (logits.argmax(2) == y).sum(0)
    n = len(tset)
    return [(s / n, c / n) for s, c in zip(loss_sum.tolist(), correct.tolist(), strict=True)]


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
