"""Atomic writes (src/io_utils.py) and checkpoint save/load/fallback (src/checkpoint.py)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from normrepro import checkpoint, io_utils

log = logging.getLogger("test_train_io")


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "f.json"
    io_utils.atomic_write_json(path, {"a": 1.5, "nan": float("nan"), "inf": [float("inf")]})
    assert json.loads(path.read_text()) == {"a": 1.5, "nan": None, "inf": [None]}

    def fail(f):
        f.write(b"half a fi")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        io_utils.atomic_write(path, fail)
    assert json.loads(path.read_text())["a"] == 1.5  # the old content, intact
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary left behind
    io_utils.atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"


def _state(epoch: int, config_hash: str = "abc") -> dict:
    return {"config_hash": config_hash, "epoch": epoch, "w": torch.full((3,), float(epoch))}


def test_save_rotates_and_load_takes_the_newest(tmp_path):
    for epoch in (1, 2, 3):
        checkpoint.save_checkpoint(tmp_path, _state(epoch))
    assert torch.load(tmp_path / checkpoint.PREVIOUS, weights_only=True)["epoch"] == 2
    assert checkpoint.load_checkpoint(tmp_path, "abc", log)["epoch"] == 3
    assert {p.name for p in tmp_path.iterdir()} == {checkpoint.CHECKPOINT, checkpoint.PREVIOUS}


def test_load_falls_back_past_corrupt_and_foreign_checkpoints(tmp_path, caplog):
    checkpoint.save_checkpoint(tmp_path, _state(1))
    checkpoint.save_checkpoint(tmp_path, _state(2))
    current = tmp_path / checkpoint.CHECKPOINT
    current.write_bytes(current.read_bytes()[:100])
    with caplog.at_level(logging.INFO):
        assert checkpoint.load_checkpoint(tmp_path, "abc", log)["epoch"] == 1
    assert "checkpoint.pt is unreadable" in caplog.text

    caplog.clear()
    assert checkpoint.load_checkpoint(tmp_path, "other", log) is None
    assert "config_hash abc, this run's is other" in caplog.text
    assert "starting from scratch" in caplog.text
    assert checkpoint.load_checkpoint(tmp_path / "missing", "abc", log) is None


def test_a_kill_between_the_two_renames_leaves_the_previous_epoch(tmp_path):
    checkpoint.save_checkpoint(tmp_path, _state(1))
    checkpoint.save_checkpoint(tmp_path, _state(2))
    (tmp_path / checkpoint.CHECKPOINT).unlink()  # as if killed after current -> prev
    assert checkpoint.load_checkpoint(tmp_path, "abc", log)["epoch"] == 1


def test_rng_capture_and_restore_replays_the_same_draws():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(5)
    saved = checkpoint.capture_rng(gen)
    first = (torch.rand(4), torch.rand(4, generator=gen))
    checkpoint.restore_rng(saved, gen)
    again = (torch.rand(4), torch.rand(4, generator=gen))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
