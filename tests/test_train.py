"""src/train.py end to end on the CPU: tiny ResNet (depth 8, width 8) on 16 x 16 synthetic images.

Every run here is in-process (train.main) except the SIGKILL test, which needs a real process.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from normrepro import checkpoint, grid, run_config, train

ROOT = Path(__file__).resolve().parents[1]
METRICS_KEYS = {
    "status", "diverged_epoch", "test_acc", "test_loss", "val_acc", "val_loss", "best_val_acc",
    "best_epoch",
    "epochs_done", "train_loss", "train_acc", "wall_s", "images_per_sec", "device", "device_name",
    "torch_version", "cuda_version", "git_rev", "git_dirty", "config_hash", "run_id", "study",
    "n_params", "finished_at", "n_train", "n_val", "n_test",
}  # fmt: skip


def make_cfg(**top) -> dict:
    """A complete, valid run config of a few-second run; keyword arguments replace top keys."""
    cfg = {
        "study": "test",
        "run_id": "resnet8-bn-bs32-s0",
        "model": "resnet20",
        "model_kw": {"depth": 8, "base_width": 8},
        "norm": "bn",
        "norm_kw": {},
        "batch_size": 32,
        "eval_batch_size": 200,
        "seed": 0,
        "lr": 0.05,
        "epochs": 2,
        "optim": {
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 5e-4,
            "wd_on_norm": True,
            "schedule": "step",
            "milestones": [2],
            "factor": 0.2,
        },
        "augment": "standard",
        "normalize": "channel",
        "data": {
            "name": "synthetic",
            "root": "data",
            "train_subset": 300,  # trained on (21 val drawn first): 300 % 32 = 12, a partial last batch
            "test_subset": 200,
            "val_size": 21,
            "split_seed": 0,
            "image_size": 16,
        },
        "runtime": {"bf16": True, "compile": False, "channels_last": True, "deterministic": False,
                    "threads": 1},
    }  # fmt: skip
    cfg.update(copy.deepcopy(top))
    return cfg


def write_cfg(tmp_path: Path, cfg: dict, name: str = "run.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


def run(tmp_path: Path, cfg: dict, out: str = "run") -> tuple[int, Path]:
    """train.main in-process; returns (exit code, RUN_DIR)."""
    run_dir = tmp_path / out
    code = train.main(["--config", str(write_cfg(tmp_path, cfg)), "--out", str(run_dir)])
    return code, run_dir


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def history(run_dir: Path) -> list[dict]:
    """history.tsv rows without the wall-clock `seconds` column."""
    header, *rows = (run_dir / "history.tsv").read_text().splitlines()
    cols = header.split("\t")
    return [
        {c: v for c, v in zip(cols, r.split("\t"), strict=True) if c != "seconds"} for r in rows
    ]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_learns_and_writes_the_contract(tmp_path):
    cfg = make_cfg(epochs=3, optim={**make_cfg()["optim"], "milestones": [2]})
    code, run_dir = run(tmp_path, cfg)
    assert code == 0
    m = metrics(run_dir)
    assert set(m) == METRICS_KEYS
    assert m["status"] == "ok" and m["diverged_epoch"] is None and m["epochs_done"] == 3
    assert m["test_acc"] > 0.5  # 10 classes: chance is 0.1
    assert 0 <= m["train_acc"] <= 1 and 0 <= m["val_acc"] <= 1
    assert m["best_val_acc"] >= m["val_acc"] and 1 <= m["best_epoch"] <= 3
    assert m["device"] == "cpu" and m["images_per_sec"] > 0 and m["n_params"] > 0
    # the images the run actually used, as its log line says (train_subset, val, test)
    log = (run_dir / "train.log").read_text()
    assert f"{m['n_train']} train / {m['n_val']} val / {m['n_test']} test images" in log
    assert m["config_hash"] == train.resolve_run_config(cfg)["config_hash"]

    rows = history(run_dir)
    assert list(rows[0]) == [c for c in train.HISTORY_COLUMNS if c != "seconds"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    # step schedule, milestone at epoch 2 (0-based): epochs 1, 2 at lr, epoch 3 at lr * 0.2
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.05, 0.01])
    assert float(rows[-1]["test_acc"]) == m["test_acc"]

    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["optim"]["label_smoothing"] == 0.0  # defaults filled in
    assert saved["runtime"]["log_every"] == 0
    log = (run_dir / "train.log").read_text()
    assert "epoch 3/3" in log and "done: ok" in log
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "checkpoint.prev.pt").exists()


def test_same_seed_same_numbers_other_seed_differs(tmp_path):
    runs = [
        run(tmp_path, make_cfg(epochs=1, seed=s), f"s{s}-{i}")[1] for i, s in enumerate((0, 0, 1))
    ]
    same, again, other = (metrics(r) for r in runs)
    keys = ("train_loss", "train_acc", "val_acc", "test_loss", "test_acc")
    assert [same[k] for k in keys] == [again[k] for k in keys]
    assert history(runs[0]) == history(runs[1])
    assert same["train_loss"] != other["train_loss"]


def test_divergence_ends_the_run_with_status_diverged(tmp_path):
    cfg = make_cfg(lr=1e12, epochs=3)
    code, run_dir = run(tmp_path, cfg)
    assert code == 0
    m = metrics(run_dir)
    assert m["status"] == "diverged" and m["diverged_epoch"] == 1 and m["epochs_done"] == 0
    assert m["test_acc"] is None and m["train_loss"] is None
    assert "diverged" in (run_dir / "train.log").read_text()
    assert history(run_dir) == []


def test_already_done_exits_without_touching_anything(tmp_path, capsys):
    cfg = make_cfg(epochs=1)
    code, run_dir = run(tmp_path, cfg)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    capsys.readouterr()
    assert run(tmp_path, cfg)[0] == 0
    assert "already done" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def _bad(**changes):
    """make_cfg() with `changes` applied: `a__b` is key b of section a; the value ... deletes."""
    cfg = make_cfg()
    for path, value in changes.items():
        *parents, last = path.split("__")
        section = cfg
        for p in parents:
            section = section[p]
        if value is ...:
            del section[last]
        else:
            section[last] = value
    return cfg


BAD_CONFIGS = {
    "unknown model": (_bad(model="vgg11"), "vgg11"),
    "unknown norm": (_bad(norm="batchnorm"), "batchnorm"),
    "unknown dataset": (_bad(data__name="mnist"), "mnist"),
    "unknown schedule": (_bad(optim__schedule="linear"), "linear"),
    "unknown augmentation": (_bad(augment="autoaugment"), "autoaugment"),
    "batch size 0": (_bad(batch_size=0), "batch_size"),
    "batch above the train set": (_bad(batch_size=301), "batch_size"),
    "negative lr": (_bad(lr=-0.1), "lr"),
    "missing key": (_bad(epochs=...), "epochs"),
    "missing nested key": (_bad(optim__momentum=...), "optim.momentum"),
    "wrong type": (_bad(batch_size="32"), "batch_size"),
    "bool for a number": (_bad(lr=True), "lr"),
    "unknown key": (_bad(learning_rate=0.1), "learning_rate"),
    "unknown nested key": (_bad(runtime__amp=True), "runtime.amp"),
    "unknown model_kw": (_bad(model_kw={"depht": 8}), "depht"),
    "edited after hashing": (_bad(config_hash="0123456789abcdef"), "config_hash"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_config_fails_before_touching_run_dir(tmp_path, capsys, case):
    cfg, named = BAD_CONFIGS[case]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"keep": true}')
    code, _ = run(tmp_path, cfg)
    err = capsys.readouterr().err
    assert code == 2
    assert "bad config" in err and named in err
    assert [p.name for p in run_dir.iterdir()] == ["metrics.json"]
    assert (run_dir / "metrics.json").read_text() == '{"keep": true}'


def test_bad_config_messages_say_what_is_allowed(tmp_path, capsys):
    run(tmp_path, _bad(optim__schedule="linear"))
    assert "allowed: step, evenly, cosine, constant" in capsys.readouterr().err
    run(tmp_path, _bad(batch_size=301))
    assert "at most the 300 training images" in capsys.readouterr().err


def test_resume_ignores_a_checkpoint_of_another_config(tmp_path):
    code, run_dir = run(tmp_path, make_cfg(epochs=1, lr=0.02))
    fresh = history(run(tmp_path, make_cfg(epochs=1), "fresh")[1])
    code, run_dir = run(tmp_path, make_cfg(epochs=1))  # same RUN_DIR, another lr
    assert code == 0
    log = (run_dir / "train.log").read_text()
    assert "checkpoint.pt was written under config_hash" in log and "not resuming" in log
    assert history(run_dir) == fresh  # started over
    assert (
        metrics(run_dir)["config_hash"]
        == train.resolve_run_config(make_cfg(epochs=1))["config_hash"]
    )


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    cfg = make_cfg(epochs=2)
    code, run_dir = run(tmp_path, cfg)
    done = history(run_dir)
    (run_dir / "metrics.json").unlink()
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # a write cut short
    assert run(tmp_path, cfg)[0] == 0
    log = (run_dir / "train.log").read_text()
    assert "checkpoint.pt is unreadable" in log and "resuming from checkpoint.prev.pt" in log
    assert history(run_dir) == done  # epoch 2 trained again, to the same numbers

    (run_dir / "metrics.json").unlink()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_dir / name).write_bytes(b"garbage")
    assert run(tmp_path, cfg)[0] == 0
    assert "starting from scratch" in (run_dir / "train.log").read_text()
    assert history(run_dir) == done


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    cfg = make_cfg(epochs=4, optim={**make_cfg()["optim"], "milestones": [3]})
    _, whole = run(tmp_path, cfg, "whole")

    run_dir = tmp_path / "killed"
    cmd = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "--config",
        str(write_cfg(tmp_path, cfg)),
    ]
    proc = subprocess.Popen([*cmd, "--out", str(run_dir)], stderr=subprocess.DEVNULL)
    try:  # kill it once epoch 2 is checkpointed (it is then in epoch 3)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            ckpt = run_dir / "checkpoint.prev.pt"  # exists once epoch 2's checkpoint rotated in
            if ckpt.exists():
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (run_dir / "metrics.json").exists(), "the run ended before it could be killed"
    # checkpoint.pt is briefly absent while it rotates: a kill then resumes from the previous one
    name = next(n for n in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS) if (run_dir / n).exists())
    epochs_done = torch.load(run_dir / name, weights_only=True)["epoch"]
    assert 1 <= epochs_done < 4

    assert train.main([*cmd[2:], "--out", str(run_dir)]) == 0
    log = (run_dir / "train.log").read_text()
    assert f"resuming from {name}: {epochs_done} epochs done" in log
    assert history(run_dir) == history(whole)
    a, b = metrics(run_dir), metrics(whole)
    for key in ("test_acc", "test_loss", "train_loss", "train_acc", "val_acc", "best_val_acc"):
        assert a[key] == b[key], key


def test_checkpoint_rotation_and_contents(tmp_path):
    code, run_dir = run(tmp_path, make_cfg(epochs=2))
    state = torch.load(run_dir / checkpoint.CHECKPOINT, weights_only=True)
    prev = torch.load(run_dir / checkpoint.PREVIOUS, weights_only=True)
    assert (state["epoch"], prev["epoch"]) == (2, 1)
    assert set(state) >= {"config_hash", "model", "optimizer", "rng", "history", "best_val"}
    assert set(state["rng"]) == {"cpu", "cuda", "data"}
    assert len(state["history"]) == 2 and not math.isnan(state["history"][-1]["test_acc"])
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporary files


def test_normalizer_free_run_with_agc_nesterov_warmup_cosine(tmp_path):
    optim = {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-5, "wd_on_norm": False,
             "schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1,
             "agc": {"clip": 0.01}}  # fmt: skip
    runtime = {**make_cfg()["runtime"], "log_every": 4}
    model_kw = {"blocks_per_stack": 1, "base_width": 8}
    cfg = make_cfg(model="nf_resnet", norm="none", model_kw=model_kw, optim=optim,
                   runtime=runtime, augment="nf", normalize="pixel_mean", epochs=3)  # fmt: skip
    code, run_dir = run(tmp_path, cfg)
    assert code == 0
    m = metrics(run_dir)
    assert m["status"] == "ok" and m["test_acc"] > 0.2  # chance: 0.1
    # warmup ends at lr on the last step of epoch 1; cosine from lr: epoch 2 at lr, epoch 3 at lr/2
    assert [float(r["lr"]) for r in history(run_dir)] == pytest.approx([0.05, 0.05, 0.025])
    assert "epoch 1 step 4/10 loss" in (run_dir / "train.log").read_text()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["optim"]["agc"] == {"clip": 0.01, "eps": 1e-3}


def test_rerun_after_the_last_epoch_only_writes_metrics(tmp_path):
    cfg = make_cfg(epochs=2)
    code, run_dir = run(tmp_path, cfg)
    first = metrics(run_dir)
    (run_dir / "metrics.json").unlink()  # killed between the last checkpoint and metrics.json
    assert run(tmp_path, cfg)[0] == 0
    assert "resuming from checkpoint.pt: 2 epochs done" in (run_dir / "train.log").read_text()
    again = metrics(run_dir)
    for key in ("test_acc", "train_loss", "best_val_acc", "best_epoch", "epochs_done"):
        assert again[key] == first[key], key


@pytest.mark.parametrize("scale", ["full", "smoke"])
def test_every_run_config_of_the_grid_validates(scale):
    runs = [c for cfgs in grid.load(overrides={"scale": scale})[1].values() for c in cfgs]
    assert runs
    for cfg in runs:
        run_config.resolve_run_config(cfg)
