"""The parts of benchmarks/gpu_check.py that train real runs or start processes: bf16 accuracy
parity (src/train.py in-process), the GPU-slot allocator with two trainer processes, and the
suite's CUDA-only tests (pytest in a subprocess)."""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from normrepro import config, gpu_slots, grid, train

REPO = Path(__file__).resolve().parents[1]
JPEG_TREE = REPO / "data" / "cifar10-jpeg"
CUDA_SKIP_REASON = "needs CUDA"  # the skip reason of the suite's CUDA-only tests


# ---------------------------------------------------------------- data for the parity runs


def find_data(root: str | None, tarball: str | None) -> Path | None:
    """The CIFAR-10 JPEG tree: --data-root, else data/cifar10-jpeg, extracted from --data-tarball
    (../shared/data/cifar10-jpeg-10k.tar.gz, which holds cifar10-jpeg/) when absent."""
    if root:
        return Path(root)
    if not (JPEG_TREE / "train").is_dir() and tarball:
        JPEG_TREE.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(JPEG_TREE.parent, filter="data")
    return JPEG_TREE if (JPEG_TREE / "train").is_dir() else None


def tiny_jpeg_tree(folder: Path, per_class: tuple[int, int] = (6, 3), classes: int = 4) -> Path:
    """A small imagefolder tree of JPEGs (the CPU mode's stand-in for CIFAR-10): each class a
    colour, plus noise, so that a few steps can learn something."""
    import torch
    from torchvision.io import write_jpeg

    gen = torch.Generator().manual_seed(0)
    for split, n in zip(("train", "test"), per_class, strict=True):
        for c in range(classes):
            (folder / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = torch.full((3, 32, 32), 40.0 * c + 30) + 30 * torch.randn(
                    3, 32, 32, generator=gen
                )
                write_jpeg(
                    img.clamp(0, 255).to(torch.uint8),
                    str(folder / split / f"class{c}" / f"{i}.jpg"),
                )
    return folder


# ---------------------------------------------------------------- bf16 parity


def parity_configs(params: dict, data_root: Path, epochs: int, batch: int, seeds: int,
                   model_kw: dict, data_extra: dict) -> list[dict]:  # fmt: skip
    """ResNet-20 BN and GN (G = 8) run configs of the batch_sweep study at one batch size,
    `epochs` epochs (its milestones scaled as the grid scales them), on the JPEG tree, with
    no val split; fp32 and bf16 copies of each (runtime.bf16 false / true)."""
    p = copy.deepcopy(params)
    study = p["studies"]["batch_sweep"]
    study.update(batch_sizes=[batch], n_seeds=seeds, epochs=epochs)
    study["data"] = {"name": "imagefolder", "root": str(data_root), "image_size": 32,
                     "val_size": 0, "train_subset": None, "test_subset": None, **data_extra}  # fmt: skip
    if model_kw:
        study["variants"] = [{**v, "model_kw": model_kw} for v in study["variants"]]
    p["runtime"] = {**p.get("runtime", {}), "compile": False, "test_every": 0}
    out = []
    for cfg in grid.study_runs(p, "batch_sweep"):
        for bf16 in (False, True):
            c = copy.deepcopy(cfg)
            c["runtime"]["bf16"] = bf16
            c["run_id"] += "-bf16" if bf16 else "-fp32"
            c["config_hash"] = config.config_hash(c)
            out.append(c)
    return out


def train_run(cfg: dict, folder: Path, device: str, log) -> dict:
    """src/train.py in-process on one config; its metrics.json."""
    path = folder / "configs" / f"{cfg['run_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    out = folder / "runs" / cfg["run_id"]
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        code = train.main(["--config", str(path), "--out", str(out), "--device", device])
    if code != 0:
        raise RuntimeError(f"train.py exited {code} on {cfg['run_id']} (log: {log.name})")
    return json.loads((out / "metrics.json").read_text())


def parity(cfgs: list[dict], folder: Path, device: str, progress) -> dict:
    """bf16 - fp32 test accuracy per (norm, seed), with its mean and range per norm and over all."""
    acc: dict[tuple[str, int], dict[str, float]] = {}
    with open(folder / "parity-train.log", "w") as log:
        for cfg in cfgs:
            t0 = time.perf_counter()
            m = train_run(cfg, folder, device, log)
            arm = "bf16" if cfg["runtime"]["bf16"] else "fp32"
            acc.setdefault((cfg["norm"], cfg["seed"]), {})[arm] = m["test_acc"]
            progress(f"  {cfg['run_id']}: test acc {m['test_acc'] * 100:.2f} % "
                     f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    rows = [{"norm": n, "seed": s, **a, "diff": a["bf16"] - a["fp32"]} for (n, s), a in acc.items()]
    diffs = [r["diff"] for r in rows]
    summary = {"mean": statistics.mean(diffs), "low": min(diffs), "high": max(diffs),
               "sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0, "n": len(diffs)}  # fmt: skip
    by_norm = {}
    for norm in dict.fromkeys(r["norm"] for r in rows):
        d = [r["diff"] for r in rows if r["norm"] == norm]
        by_norm[norm] = {"mean": statistics.mean(d), "low": min(d), "high": max(d), "n": len(d)}
    return {"rows": rows, "summary": summary, "by_norm": by_norm,
            "epochs": cfgs[0]["epochs"], "batch": cfgs[0]["batch_size"]}  # fmt: skip


# ---------------------------------------------------------------- GPU slots


def tiny_run_config(seed: int, epochs: int, n_train: int) -> dict:
    """A complete run config of a short run on synthetic images (a trainer process's work)."""
    cfg = {
        "study": "gpu_check", "run_id": f"slots-s{seed}", "model": "resnet20",
        "model_kw": {"depth": 8, "base_width": 8}, "norm": "bn", "norm_kw": {},
        "batch_size": 32, "eval_batch_size": 200, "seed": seed, "lr": 0.05, "epochs": epochs,
        "optim": {"momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "wd_on_norm": True,
                  "schedule": "constant"},
        "augment": "standard", "normalize": "channel",
        "data": {"name": "synthetic", "train_subset": n_train, "test_subset": 64, "val_size": 0,
                 "image_size": 16},
        "runtime": {"bf16": True, "compile": False, "channels_last": True,
                    "deterministic": False, "threads": 1, "test_every": 0},
    }  # fmt: skip
    cfg["config_hash"] = config.config_hash(cfg)
    return cfg


def two_trainers_one_gpu(folder: Path, cuda: bool, epochs: int, n_train: int) -> dict:
    """Two `python -m normrepro.train --device auto` processes that may use one GPU. The check
    holds that GPU's slot while both start, so both must wait; then it lets go: one trains,
    and the other must wait until the first has exited (its config.json, written once it holds
    the slot, is no older than the first one's metrics.json)."""
    slots = folder / "slots"
    gpu = (gpu_slots.usable_gpus() or ["0"])[0] if cuda else "0"
    env = {**os.environ, gpu_slots.ENV_DIR: str(slots), "CUDA_VISIBLE_DEVICES": gpu}
    env.pop("SLURM_JOB_ID", None)
    if not cuda:
        env[gpu_slots.ENV_COUNT] = "1"  # a simulated one-GPU machine: the same locking code
    held = gpu_slots.claim([gpu], slots)
    procs, errs = {}, {}
    try:
        for name in ("a", "b"):
            cfg = tiny_run_config(seed=ord(name) - ord("a"), epochs=epochs, n_train=n_train)
            (folder / f"{name}.json").write_text(json.dumps(cfg))
            errs[name] = open(folder / f"{name}.stderr", "w")  # noqa: SIM115 - closed below
            cmd = [sys.executable, "-m", "normrepro.train", "--config", str(folder / f"{name}.json"),
                   "--out", str(folder / name), "--device", "auto"]  # fmt: skip
            procs[name] = subprocess.Popen(cmd, env=env, stdout=errs[name], stderr=errs[name])
        deadline = time.monotonic() + 180
        while not all("waiting" in (folder / f"{n}.stderr").read_text() for n in procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                raise RuntimeError("the two trainers did not both wait for the held GPU: "
                                   + "; ".join(_tail(folder / f"{n}.stderr") for n in procs))  # fmt: skip
            time.sleep(0.1)
    finally:
        os.close(held.fd)  # lets them go (or, after an error, lets them end)
        codes = {n: p.wait(timeout=600) for n, p in procs.items()}
        for f in errs.values():
            f.close()
    if any(codes.values()):
        raise RuntimeError(
            f"trainer exit codes {codes}: "
            + "; ".join(_tail(folder / f"{n}.stderr") for n in procs)
        )
    metrics = {n: json.loads((folder / n / "metrics.json").read_text()) for n in procs}
    done = {n: (folder / n / "metrics.json").stat().st_mtime for n in procs}
    started = {n: (folder / n / "config.json").stat().st_mtime for n in procs}
    first, second = sorted(procs, key=done.get)
    ok = started[second] >= done[first]
    return {
        "ok": ok, "gpu": gpu, "devices": {n: m["device"] for n, m in metrics.items()},
        "second_started_after_first_finished_s": round(started[second] - done[first], 3),
        "both_waited_for_the_held_slot": True,
    }  # fmt: skip


def _tail(path: Path, n: int = 300) -> str:
    text = " ".join(path.read_text().split()) if path.exists() else ""
    return f"{path.name}: ...{text[-n:]}"


# ---------------------------------------------------------------- CUDA-only tests


def cuda_only_tests(tests_dir: Path = REPO / "tests") -> list[str]:
    """pytest node ids of the tests skipped without CUDA: a skipif decorator whose reason says
    CUDA_SKIP_REASON."""
    nodes = []
    for path in sorted(tests_dir.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test"):
                marks = " ".join(ast.unparse(d) for d in fn.decorator_list)
                if "skipif" in marks and CUDA_SKIP_REASON in marks:
                    nodes.append(f"{path.relative_to(REPO)}::{fn.name}")
    return nodes


def run_cuda_tests(folder: Path) -> dict:
    """pytest on the CUDA-only tests; counts of each outcome and the skip reasons."""
    nodes = cuda_only_tests()
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *nodes]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    (folder / "cuda-tests.log").write_text(res.stdout + res.stderr)
    last = (res.stdout.strip().splitlines() or [""])[-1]
    counts = {w: int(n) for n, w in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", last)}
    return {"nodes": nodes, "exit_code": res.returncode, "summary": last, "counts": counts,
            "skipped_for_cuda": sum(int(n) for n in re.findall(r"SKIPPED \[(\d+)\].*needs CUDA", res.stdout))}  # fmt: skip


def scratch(out: Path, keep: bool) -> Path:
    """Where the runs go: out/work when kept, else a temporary folder."""
    if keep:
        (out / "work").mkdir(parents=True, exist_ok=True)
        return out / "work"
    return Path(tempfile.mkdtemp(prefix="gpu-check-"))
