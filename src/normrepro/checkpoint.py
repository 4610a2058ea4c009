"""A run's progress on disk, epoch by epoch: checkpoints to resume from, and history.tsv.

RUN_DIR/checkpoint.pt is the last good epoch, RUN_DIR/checkpoint.prev.pt the one before. A
checkpoint is a plain dict (tensors, numbers, strings, lists), loaded with weights_only=True:
  config_hash, epoch (epochs done), model, optimizer, rng {cpu, cuda, data}, best_val
  (accuracy, epoch), history (the history.tsv rows so far), totals {train_images,
  train_seconds, wall_s}.
RUN_DIR/history.tsv has one row per epoch done (HISTORY_COLUMNS), rewritten whole after each
checkpoint; a resumed run rewrites it from its checkpoint's history.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from normrepro.io_utils import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from normrepro.loop import Member

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
HISTORY_COLUMNS += ("test_loss", "test_acc", "seconds")


def save_epoch(member: Member, model_state: dict, optimizer_state: dict, rng: dict) -> None:
    """The run's last epoch (member.history[-1]) on disk: its checkpoint, then history.tsv."""
    state = {
        "config_hash": member.cfg["config_hash"],
        "epoch": member.history[-1]["epoch"],
        "model": model_state,
        "optimizer": optimizer_state,
        "rng": rng,
        "best_val": best_val(member.history),
        "history": member.history,
        "totals": member.totals,
    }
    save_checkpoint(member.run_dir, state)
    write_history(member.run_dir, member.history)


def resume(member: Member) -> None:
    """Model, optimizer, RNGs and history as they were at the end of the run's last good epoch
    (nothing changes without a usable checkpoint)."""
    state = load_checkpoint(member.run_dir, member.cfg["config_hash"], member.log)
    if state is not None:
        member.model.load_state_dict(state["model"])
        member.optimizer_state = state["optimizer"]
        restore_rng(state["rng"], member.data_gen, member.model_gen)
        member.history, member.totals = state["history"], state["totals"]
    # Drops rows of an epoch that never reached a checkpoint.
    write_history(member.run_dir, member.history)
    member.wall_before = member.totals["wall_s"]


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


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write `state` whole under a temporary name, then rotate: current -> prev, new -> current.

    A kill at any point leaves checkpoint.pt or checkpoint.prev.pt holding a whole, good epoch.
    """
    tmp = run_dir / f".{CHECKPOINT}.new"
    atomic_write(tmp, lambda f: torch.save(state, f))
    if (run_dir / CHECKPOINT).exists():
        os.replace(run_dir / CHECKPOINT, run_dir / PREVIOUS)
    os.replace(tmp, run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path, config_hash: str, log: logging.Logger) -> dict | None:
    """The newest readable checkpoint written under `config_hash`, or None (start from scratch).

    Tries checkpoint.pt, then checkpoint.prev.pt; logs why each existing one is not used.
    """
    candidates = [run_dir / CHECKPOINT, run_dir / PREVIOUS]
    for path in candidates:
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt, or not a checkpoint at all
            log.warning(
                "%s is unreadable (%s: %s); not resuming from it", path.name, type(e).__name__, e
            )
            continue
        found = state.get("config_hash") if isinstance(state, dict) else None
        if found != config_hash:
            log.warning(
                "%s was written under config_hash %s, this run's is %s (the config changed): "
                "not resuming from it",
                path.name,
                found,
                config_hash,
            )
            continue
        log.info("resuming from %s: %d epochs done", path.name, state["epoch"])
        return state
    if any(p.exists() for p in candidates):
        log.warning("no usable checkpoint: starting from scratch")
    return None


def capture_rng(
    data_generator: torch.Generator, model_generator: torch.Generator | None = None
) -> dict:
    """Every RNG a training step draws from: the model's (dropout) and the data's.

    Without model_generator, the model draws from torch's global CPU and CUDA RNGs. With one
    (a run of a pack, src/packing.py: its own dropout RNG), its state is stored where the
    global RNG's of its device would be ("cpu", or "cuda" as a one-element list), so the file
    has the same keys either way.
    """
    if model_generator is None:
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    elif model_generator.device.type == "cpu":
        cpu, cuda = model_generator.get_state(), []
    else:
        cpu, cuda = torch.get_rng_state(), [model_generator.get_state()]
    return {"cpu": cpu, "cuda": cuda, "data": data_generator.get_state()}


def restore_rng(
    rng: dict, data_generator: torch.Generator, model_generator: torch.Generator | None = None
) -> None:
    """Put back what capture_rng saved (with the same model_generator or None)."""
    if model_generator is None:
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    elif model_generator.device.type == "cpu":
        model_generator.set_state(rng["cpu"])
    elif rng["cuda"]:
        model_generator.set_state(rng["cuda"][0])
    data_generator.set_state(rng["data"])
