"""Step timing for benchmarks/gpu_check.py: the trainer's EpochLoop (loop.py) timed as it runs.

A variant is one way of training the same cell (model, norm, batch size): memory format, bf16
autocast, pack size K, torch.compile mode. The variants of a cell are built side by side and
timed in interleaved rounds (one epoch of `steps` steps each per round, after the same untimed
warm-up), so a ratio of two variants is taken per round, from epochs that ran back to back, and
reported as the median and range over the rounds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from normrepro import data
from normrepro.augment import iterate_batches, make_batch_transform
from normrepro.loop import EpochLoop
from normrepro.models import build_model
from normrepro.packing import PackedModel


@dataclass(frozen=True)
class Variant:
    """How a cell is trained: channels_last, bf16 autocast, runs per pack, compile mode."""

    name: str
    channels_last: bool
    bf16: bool
    k: int = 1
    compile: str | None = None  # None: eager; else torch.compile's mode ("default", ...)


# ResNet-20's eager variants: the four combinations of the two switches, and packs of 2 and 5
# with the trainer's CUDA setting (train.DEVICE_SWITCHES: channels_last + bf16 autocast).
EAGER = (
    Variant("fp32", False, False),
    Variant("cl", True, False),
    Variant("bf16", False, True),
    Variant("cl_bf16", True, True),
    Variant("pack2", True, True, k=2),
    Variant("pack5", True, True, k=5),
)
TRAINER = EAGER[3]  # what src/train.py uses on CUDA (runtime.compile is false in params.yaml)
COMPILED = (
    Variant("compile", True, True, compile="default"),
    Variant("compile_ro", True, True, compile="reduce-overhead"),  # CUDA graphs
)


@dataclass(frozen=True)
class Cell:
    """What is trained: a model of the grid at one batch size."""

    model: str
    norm: str
    batch: int
    model_kw: tuple = ()  # sorted items
    norm_kw: tuple = ()
    augment: str = "standard"
    normalize: str = "channel"

    @property
    def label(self) -> str:
        groups = dict(self.norm_kw).get("groups")
        return f"{self.model} {self.norm}{f'(G={groups})' if groups else ''} b{self.batch}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_loop(cell: Cell, variant: Variant, splits, device, compile_backend=None) -> EpochLoop:
    """A pack of variant.k runs of the cell (seeds 0..k-1), as src/train.py builds one."""
    fmt = torch.channels_last if variant.channels_last else torch.contiguous_format
    models = []
    for seed in range(variant.k):
        torch.manual_seed(seed)
        models.append(build_model(cell.model, cell.norm, splits.num_classes, 3,
                                  **dict(cell.model_kw), **dict(cell.norm_kw)))  # fmt: skip
    pack = PackedModel(models, [torch.Generator(device) for _ in models])
    pack = pack.to(device, memory_format=fmt)
    model = pack
    if variant.compile:
        kw = {"backend": compile_backend} if compile_backend else {"mode": variant.compile}
        model = torch.compile(pack, **kw)
    return EpochLoop(
        model=model,
        optimizer=torch.optim.SGD(pack.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4),
        train_set=splits.train,
        transform=make_batch_transform(cell.augment, cell.normalize, splits, True, fmt),
        generators=[torch.Generator(device).manual_seed(s) for s in range(variant.k)],
        batch_size=cell.batch,
        lr=lambda epoch, step: 0.01,
        autocast=torch.autocast(device.type, torch.bfloat16, enabled=variant.bf16),
        check_every=50 if device.type == "cuda" else 1,
    )


def timed_epoch(loop: EpochLoop, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    loop.run_epoch(0)
    sync(device)
    return time.perf_counter() - t0


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def time_cell(cell, variants, splits, device, steps, rounds, warmup, backend=None) -> dict:
    """variant name -> {"step_s": {median, low, high}, "images_per_s", "warmup_s", "k"} and,
    per round, "ratio_to" every other variant (images/s over all runs of each pack)."""
    n = steps * cell.batch
    timed = data.TensorSet(splits.train.x[:n], splits.train.y[:n])
    first = data.TensorSet(
        splits.train.x[: warmup * cell.batch], splits.train.y[: warmup * cell.batch]
    )
    loops, warm = {}, {}
    for v in variants:
        loop = make_loop(cell, v, splits, device, backend if v.compile else None)
        loop.train_set = first
        t0 = time.perf_counter()
        timed_epoch(loop, device)  # warm-up: cuDNN autotuning, allocator, compiling
        timed_epoch(loop, device)  # a second: CUDA graphs are recorded after the first calls
        warm[v.name] = time.perf_counter() - t0
        loop.train_set = timed
        loops[v.name] = loop
    per_round: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(rounds):
        for name, loop in loops.items():
            per_round[name].append(timed_epoch(loop, device) / steps)
    out = {}
    for v in variants:
        secs = per_round[v.name]
        out[v.name] = {
            "k": v.k,
            "step_s": spread(secs),
            "images_per_s": v.k * cell.batch / statistics.median(secs),
            "warmup_s": round(warm[v.name], 2),
        }
    for v in variants:  # images/s of v over images/s of w, per round
        out[v.name]["ratio_to"] = {
            w.name: spread(
                [
                    (v.k / a) / (w.k / b)
                    for a, b in zip(per_round[v.name], per_round[w.name], strict=True)
                ]
            )
            for w in variants
            if w is not v
        }
    return out


def time_pipeline(splits, device, batch: int, n_images: int, rounds: int) -> dict:
    """Images/s of the input pipeline alone: shuffled batches of the resident uint8 tensor,
    random crop + flip + normalization (augment.make_batch_transform), no model."""
    gen = torch.Generator(device).manual_seed(0)
    tf = make_batch_transform("standard", "channel", splits, True, torch.channels_last)
    subset = data.TensorSet(splits.train.x[:n_images], splits.train.y[:n_images])
    rates = []
    for r in range(rounds + 1):
        sync(device)
        t0 = time.perf_counter()
        for xb, _ in iterate_batches(subset, batch, True, gen, drop_last=True):
            tf(xb, gen)
        sync(device)
        if r:  # round 0 warms up
            rates.append((n_images // batch) * batch / (time.perf_counter() - t0))
    return spread(rates)
