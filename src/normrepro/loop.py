"""The epoch loop: the runs of a pack (packing.py; one run is a pack of one) trained from their
epoch to the last, evaluated and saved after every epoch.

    Member        one run of a pack: its config, folder, log, model, RNGs and what it has done
    packs         runs at one epoch -> the fused models they train as
    train_pack    one fused model, epoch by epoch: train, evaluate, stop a diverged run, save
    EpochLoop     one SGD step of every run and one epoch of steps (benchmarks/ time it as it is)
    evaluate      (loss, accuracy) of every run on a split, in eval mode

Every epoch ends on disk (checkpoint.save_epoch) before the next starts, so a kill loses at
most the epoch in progress.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from normrepro import data, switch_policy
from normrepro.augment import batches_per_epoch, iterate_batches, make_batch_transform
from normrepro.checkpoint import capture_rng, save_epoch
from normrepro.optim import adaptive_clip_grad_, clipped_params, lr_at, make_optimizer, set_lr
from normrepro.packing import PackedModel, PackError, pack_optimizer_states, unpack_optimizer_state

CUDA_CHECK_EVERY = 50  # CUDA: steps between non-finite loss checks (each one syncs the GPU)
# Runtime switches each device uses where the run config's runtime.<switch> allows it, chosen by
# measurement (benchmarks/pack_throughput.py --switches; README "Packed seeds"): on this
# project's CPU (2 cores) channels_last is 1.06-1.63x faster for ResNet-20. bf16 autocast was
# measured 1.3-2.5x faster there too, but it lowers every CPU run's precision: off until decided.
# torch.compile is off on the CPU (minutes of compiling per job, gain unmeasured). CUDA: decided
# by `make gpu-check`'s committed measurement (benchmarks/switch_policy.json: speed of the
# channels_last x bf16 combinations and of compile, bf16 - fp32 accuracy parity; rules in
# src/normrepro/switch_policy.py); until a GPU has run it, the seeds' setting: all three on.
DEVICE_SWITCHES = {
    "cuda": switch_policy.cuda_switches(),
    "cpu": {"channels_last": True, "bf16": False, "compile": False},
}


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


def drop_last_batch(cfg: dict, n_train: int) -> bool:
    # A last training batch of one image gives BatchNorm a one-sample batch: drop it (for every
    # norm, so that norms are compared on the same batches). Other remainders are trained on.
    return n_train % cfg["batch_size"] == 1 and cfg["batch_size"] > 1


def device_switches(runtime: dict, device: torch.device) -> dict[str, bool]:
    """channels_last, bf16 (autocast), compile: on where the config allows it and the device
    gains from it (DEVICE_SWITCHES)."""
    return {k: runtime[k] and on for k, on in DEVICE_SWITCHES[device.type].items()}


def packs(group: list[Member]) -> Iterator[tuple[list[Member], PackedModel]]:
    """The fused models that runs at one epoch train as: one for all of them, or, where a layer
    cannot be fused (logged), one per run, built when the run before it has finished."""
    try:
        pack = PackedModel([m.model for m in group], [m.model_gen for m in group])
    except PackError as err:
        for m in group:
            m.log.warning("%s; the pack's %d runs train one after another", err, len(group))
        for m in group:
            yield [m], PackedModel([m.model], [m.model_gen])  # a pack of one always fuses
        return
    yield group, pack


def test_due(cfg: dict, epoch: int, n_test: int) -> bool:
    """Whether epoch (0-based) ends with a pass over the test set: every runtime.test_every
    epochs and after the last (a 10k-image pass costs as much as a small training epoch on a
    CPU); never without a test set (data.test_subset: 0, e.g. the laptop calibration). The val
    split, which picks best_val, is evaluated after every epoch."""
    every = cfg["runtime"]["test_every"]
    due = epoch + 1 == cfg["epochs"] or (every > 0 and (epoch + 1) % every == 0)
    return due and n_test > 0


def train_pack(
    group: list[Member], pack: PackedModel, splits, device: torch.device, started: float
) -> None:
    """Train the runs of `group` (all at one epoch), fused in `pack`, to the last epoch; after
    every epoch evaluate them, stop those that diverged and save the others (their checkpoint,
    history.tsv and log line). started: time.perf_counter() when the job started (wall_s)."""
    cfg, k_runs = group[0].cfg, len(group)
    if k_runs > 1:
        for m in group:
            m.log.info("packed: %d runs trained as one model: %s", k_runs,
                       ", ".join(o.cfg["run_id"] for o in group))  # fmt: skip
    switches = device_switches(cfg["runtime"], device)
    memory_format = torch.channels_last if switches["channels_last"] else torch.contiguous_format
    pack = pack.to(device, memory_format=memory_format)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=switches["bf16"])
    eval_tf = make_batch_transform(
        cfg["augment"], cfg["normalize"], splits, train=False, memory_format=memory_format
    )
    loop = new_epoch_loop(group, pack, splits, device, switches, memory_format, autocast)
    for epoch in range(len(group[0].history), cfg["epochs"]):
        if not any(loop.active):
            break
        t0 = time.perf_counter()
        train_losses, train_accs, n_seen, lr = loop.run_epoch(epoch)
        train_seconds = time.perf_counter() - t0
        tested = test_due(cfg, epoch, len(splits.test))
        val = test = [(math.nan, math.nan)] * k_runs
        if any(loop.active[k] and math.isfinite(train_losses[k]) for k in range(k_runs)):
            val = evaluate(pack, splits.val, eval_tf, cfg["eval_batch_size"], autocast)
            if tested:
                test = evaluate(pack, splits.test, eval_tf, cfg["eval_batch_size"], autocast)
        states = optimizer_states = None  # unpacked once per epoch, when a run saves
        for k, m in enumerate(group):
            if m.diverged_epoch is not None:
                continue
            (val_loss, val_acc), (test_loss, test_acc) = val[k], test[k]
            train_loss = train_losses[k]
            if not math.isfinite(train_loss) or (tested and not math.isfinite(test_loss)):
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
                optimizer_states = unpack_optimizer_state(loop.optimizer.state_dict(), k_runs)
            save_epoch(m, states[k], optimizer_states[k], capture_rng(m.data_gen, m.model_gen))
            evaluated = {"val": len(splits.val) > 0, "test": tested}
            m.log.info(epoch_log_line(row, cfg["epochs"], evaluated, n_seen / train_seconds))


def new_epoch_loop(group, pack, splits, device, switches, memory_format, autocast) -> EpochLoop:
    """The EpochLoop of a pack: its optimizer (the runs' resumed SGD states stacked), schedule,
    augmentation and checks, as the runs' shared config says."""
    cfg = group[0].cfg
    opt_cfg = cfg["optim"]
    n_train = len(splits.train)
    drop_last = drop_last_batch(cfg, n_train)
    steps = batches_per_epoch(n_train, cfg["batch_size"], drop_last)
    optimizer = make_optimizer(pack.net, cfg["lr"], opt_cfg)
    if group[0].optimizer_state is not None:  # resumed (all at one epoch: all have one)
        optimizer.load_state_dict(pack_optimizer_states([m.optimizer_state for m in group]))
    transform = make_batch_transform(
        cfg["augment"], cfg["normalize"], splits, train=True, memory_format=memory_format
    )
    return EpochLoop(
        model=torch.compile(pack) if switches["compile"] else pack,
        optimizer=optimizer,
        train_set=splits.train,
        transform=transform,
        generators=[m.data_gen for m in group],
        batch_size=cfg["batch_size"],
        lr=lambda epoch, step: lr_at(opt_cfg, cfg["lr"], cfg["epochs"], epoch, step, steps),
        drop_last=drop_last,
        label_smoothing=opt_cfg["label_smoothing"],
        agc=opt_cfg["agc"],
        autocast=autocast,
        check_every=CUDA_CHECK_EVERY if device.type == "cuda" else 1,  # a CPU check is free
        log_every=cfg["runtime"]["log_every"],
        logs=[m.log for m in group],
    )


def epoch_log_line(row: dict, epochs: int, evaluated: dict[str, bool], images_per_s: float):
    """An epoch's log line. A split that was not evaluated this epoch (the test set between
    runtime.test_every epochs or with data.test_subset 0, an empty val split) is left out: a
    `nan` there would read as a divergence."""
    parts = [
        f"epoch {row['epoch']}/{epochs} lr {row['lr']:.4g}",
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}",
    ]
    for split in ("val", "test"):
        if evaluated[split]:
            parts.append(f"{split} loss {row[split + '_loss']:.4f} acc {row[split + '_acc']:.4f}")
    parts.append(f"{row['seconds']:.1f} s, {images_per_s:.0f} img/s")
    return " | ".join(parts)


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
