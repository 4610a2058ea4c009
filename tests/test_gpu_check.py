"""benchmarks/gpu_check.py: its CPU mode runs every section's code path and writes JSON and
markdown with the expected rows; without CUDA (and without --cpu) it fails in one line; the
GPU-hour table it recomputes agrees with the README's formula written out here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normrepro import config, gpu_hours, grid, pack_policy, switch_policy

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
EAGER = {"fp32", "cl", "bf16", "cl_bf16", "pack2", "pack5"}


def run_check(tmp_path: Path, *args: str, env_extra: dict | None = None):
    # Snakemake and DVC are not on a GPU image: stand-ins that fail on import prove that the
    # check (and the trainers and pytest it starts) never imports them.
    shims = tmp_path / "shims"
    for name in ("snakemake", "dvc"):
        (shims / name).mkdir(parents=True, exist_ok=True)
        (shims / name / "__init__.py").write_text(
            f"raise ImportError('gpu_check imported {name}')\n"
        )
    path = os.pathsep.join([str(shims), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_without_cuda_and_without_cpu_mode_it_says_so_in_one_line(tmp_path):
    res = run_check(tmp_path, env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device here" in lines[0] and "--cpu" in lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "out").exists()  # nothing started


def test_cpu_mode_runs_every_section_and_writes_json_and_markdown(tmp_path):
    res = run_check(tmp_path, "--cpu")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resnet20 ..." in res.stdout and "done in" in res.stdout  # progress as it goes
    out = tmp_path / "out"
    result = json.loads((out / "gpu_check.json").read_text())
    sections = result["sections"]
    assert {n: e["status"] for n, e in sections.items()} == dict.fromkeys(
        ["resnet20", "big_models", "pipeline", "parity", "slots", "cuda_tests", "compile",
         "gpu_hours"], "ok")  # fmt: skip
    assert result["forbidden_imports"] == []
    sizes = result["sizes"]

    rows = sections["resnet20"]["result"]
    assert [(r["norm"], r["batch"]) for r in rows] == [
        (n, b) for n in sizes["norms"] for b in sizes["batches"]
    ]
    for r in rows:
        assert set(r["variants"]) == EAGER
        for v in r["variants"].values():  # images/s: all runs of a pack over the median step
            assert v["images_per_s"] == pytest.approx(v["k"] * r["batch"] / v["step_s"]["median"])
            assert v["step_s"]["low"] <= v["step_s"]["median"] <= v["step_s"]["high"]
    assert [r["variants"][p]["k"] for p in ("pack2", "pack5")] == [2, 5]

    big = {(r["model"], r["norm"]) for r in sections["big_models"]["result"]}
    assert {("wrn28_10", "bn"), ("wrn28_10", "gn_ws"), ("nf_resnet", "none")} <= big

    parity = sections["parity"]["result"]
    assert {(r["norm"], r["seed"]) for r in parity["rows"]} == {
        (n, s) for n in ("bn", "gn") for s in range(sizes["parity_seeds"])
    }
    # On the CPU the trainer leaves bf16 off (DEVICE_SWITCHES), so both arms are the same
    # deterministic run: any difference would be a bug in how the check pairs its runs.
    assert all(r["diff"] == 0.0 == r["bf16"] - r["fp32"] for r in parity["rows"])

    slots = sections["slots"]["result"]
    assert slots["ok"] and slots["second_started_after_first_finished_s"] >= 0
    assert slots["devices"] == {"a": "cpu", "b": "cpu"}

    tests = sections["cuda_tests"]["result"]
    assert "tests/test_augment.py::test_cuda_batches_are_deterministic" in tests["nodes"]
    if not torch.cuda.is_available():
        assert tests["counts"].get("skipped", 0) >= 1 and "passed" not in tests["counts"]
        assert tests["skipped_for_cuda"] == tests["counts"]["skipped"]

    compiled = sections["compile"]["result"]["cells"]
    assert len(compiled) == 1 and {"compile", "compile_ro", "cl_bf16"} == set(
        compiled[0]["variants"]
    )

    hours = sections["gpu_hours"]["result"]["studies"]
    enabled = grid.studies(config.load_params(ROOT / "params.yaml", {"scale": "full"}))
    assert list(hours) == [*enabled, "all"]
    assert hours["all"]["runs"] == sum(hours[s]["runs"] for s in enabled)

    md = (out / "gpu_check.md").read_text()
    for heading in ("## ResNet-20 (eager)", "## Other models", "## Input pipeline alone",
                    "## bf16 parity", "## GPU slots", "## CUDA-only tests",
                    "## GPU-hours of the full-scale grid", "## Decisions this measurement"):  # fmt: skip
        assert heading in md, heading
    assert "CPU mode" in md
    assert sum(line.startswith(("| bn | 2 |", "| gn | 2 |")) for line in md.splitlines()) >= 4

    # the CPU mode's numbers are no GPU measurement: they are never recorded for auto
    res = subprocess.run([sys.executable, str(SCRIPT), "--policy-from", str(out / "gpu_check.json")],
                         cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "no GPU measurement" in res.stderr
    assert "Traceback" not in res.stderr

    # a CUDA result brought back (here: the same numbers labelled cuda) is recorded where auto
    # reads it: the packed / eager ratios of each cell, and the switch measurement
    fake = tmp_path / "cuda.json"
    fake.write_text(json.dumps({**result, "mode": "cuda"}))
    policies = {"NORMREPRO_PACK_POLICY": str(tmp_path / "pack.json"),
                "NORMREPRO_SWITCH_POLICY": str(tmp_path / "switch.json")}  # fmt: skip
    res = subprocess.run([sys.executable, str(SCRIPT), "--policy-from", str(fake)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, **policies})  # fmt: skip
    assert res.returncode == 0, res.stderr
    recorded = json.loads((tmp_path / "pack.json").read_text())["devices"]["cuda"]
    assert (
        "gpu_check.py" in recorded["source"] and recorded["machine"] == result["env"]["device_name"]
    )
    expect = {(r["norm"], r["batch"], int(p[-1])): round(r["variants"][p]["ratio_to"]["cl_bf16"]["median"], 3)
              for r in rows for p in ("pack2", "pack5")}  # fmt: skip
    assert {(c["norm"], c["batch"], c["k"]): c["median"] for c in recorded["ratios"]} == expect
    for batch, d in result["decisions"]["pack"].items():
        assert pack_policy.auto_pack_size(int(batch), "cuda", tmp_path / "pack.json") == d["k"]
    switches = json.loads((tmp_path / "switch.json").read_text())
    assert switches["decision"] == result["decisions"]["switches"]
    assert switch_policy.cuda_switches(tmp_path / "switch.json") == switches["decision"]


def test_gpu_hours_follow_the_readme_formula():
    """GPU-hours of a run = steps x step time, steps = epochs x ceil(45,000 / batch); step time
    interpolated linearly in the batch size between measured ones; a pack of 5 costs one packed
    step per step for all five runs; norms without a timing of their own borrow BN's or GN's."""
    params = config.load_params(ROOT / "params.yaml", {"scale": "full"})
    measured = {("bn", 2): 0.010, ("bn", 128): 0.020, ("gn", 2): 0.012, ("gn", 128): 0.030}
    times = gpu_hours.StepTimes()
    for (norm, batch), t in measured.items():
        times.add("resnet20", norm, batch, 1, t)
    packed = {2: 0.020, 128: 0.080}  # BN packs of 5: less than 5 runs' steps
    for batch, t in packed.items():
        times.add("resnet20", "bn", batch, 5, t)

    def line(t2: float, t128: float, batch: int) -> float:
        return t2 + (t128 - t2) * (batch - 2) / (128 - 2)

    def step_s(norm: str, batch: int) -> float:
        family = "bn" if norm in ("bn", "bn_ws") else "gn"  # ln, in, gn_ws: GN kernels
        return line(measured[(family, 2)], measured[(family, 128)], batch)

    hours = gpu_hours.grid_hours(params, times, pack=5)
    for study in ("batch_sweep", "group_sweep", "norm_compare"):
        cfgs = grid.study_runs(params, study)
        expect = (
            sum(
                c["epochs"]
                * math.ceil(45_000 / c["batch_size"])
                * step_s(c["norm"], c["batch_size"])
                for c in cfgs
            )
            / 3600
        )
        assert hours[study]["hours"] == pytest.approx(expect, rel=1e-12)
        assert hours[study]["unmeasured"] == 0
    # batch_sweep packed: a BN cell's 5 seeds are one pack (one packed step per step); GN has no
    # pack timing, so its cells cost as unpacked
    sweep = grid.study_runs(params, "batch_sweep")
    cells = {(c["norm"], c["batch_size"]) for c in sweep}
    assert all(sum((c["norm"], c["batch_size"]) == cell for c in sweep) == 5 for cell in cells)
    expect_packed = (
        sum(
            100
            * math.ceil(45_000 / b)
            * (line(packed[2], packed[128], b) if norm == "bn" else 5 * step_s(norm, b))
            for norm, b in cells
        )
        / 3600
    )
    assert hours["batch_sweep"]["packed_hours"] == pytest.approx(expect_packed, rel=1e-12)
    assert hours["batch_sweep"]["packed_hours"] < hours["batch_sweep"]["hours"]
    # models with no timing are counted, not guessed
    for study in ("wrn_table", "nf_grid", "nf_final"):
        assert hours[study]["unmeasured"] == len(grid.study_runs(params, study)) > 0
        assert hours[study]["hours"] == 0
    assert hours["all"]["hours"] == pytest.approx(
        sum(hours[s]["hours"] for s in hours if s != "all")
    )
