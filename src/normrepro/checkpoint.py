"""Per-epoch checkpoints of a run: save with a kept previous copy, load with fallbacks.

RUN_DIR/checkpoint.pt is the last good epoch, RUN_DIR/checkpoint.prev.pt the one before. A
checkpoint is a plain dict (tensors, numbers, strings, lists), loaded with weights_only=True:
  config_hash, epoch (epochs done), model, optimizer, rng {cpu, cuda, data}, best_val_acc,
  best_epoch, history (the history.tsv rows so far), train_images, train_seconds, wall_s.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from normrepro.io_utils import atomic_write

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


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
