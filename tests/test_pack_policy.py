"""runtime.pack auto and the CUDA switches read committed measurements (pack_policy.py,
switch_policy.py): a change to the measured table changes the plan; an unmeasured device does
not pack; the committed CPU table is a real measurement that the rule reads as written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from normrepro import config, grid, pack_policy, switch_policy

ROOT = Path(__file__).resolve().parents[1]


def ratio(norm, batch, k, median):
    return {"norm": norm, "batch": batch, "k": k, "median": median, "low": median - 0.1,
            "high": median + 0.1, "rounds": 5}  # fmt: skip


TABLE = [  # batch 2: K=5 (its lowest median over norms, 1.5, beats K=2's 1.3)
    ratio("bn", 2, 2, 1.4), ratio("gn", 2, 2, 1.3), ratio("bn", 2, 5, 1.6), ratio("gn", 2, 5, 1.5),
    # batch 8: K=2 (1.10 > 1.05; K=5's 1.04 is not a gain)
    ratio("bn", 8, 2, 1.2), ratio("gn", 8, 2, 1.1), ratio("bn", 8, 5, 1.04), ratio("gn", 8, 5, 1.3),
    # batch 32: no pack
    ratio("bn", 32, 2, 0.8), ratio("gn", 32, 2, 0.9), ratio("bn", 32, 5, 0.7), ratio("gn", 32, 5, 0.6),
]  # fmt: skip


@pytest.fixture
def policy(tmp_path, monkeypatch):
    path = tmp_path / "pack_policy.json"
    monkeypatch.setenv(pack_policy.ENV_PATH, str(path))

    def write(ratios, device="cpu"):
        pack_policy.record(device, ratios, "test", "test machine")
        return path

    return write


def full_batch_sweep() -> list[dict]:
    return grid.study_runs(
        config.load_params(ROOT / "params.yaml", {"scale": "full"}), "batch_sweep"
    )


def job_sizes(cfgs, device="cpu") -> dict[tuple[str, int], list[int]]:
    out: dict[tuple[str, int], list[int]] = {}
    for job in grid.jobs(cfgs, "auto", device):
        out.setdefault((job.runs[0]["norm"], job.runs[0]["batch_size"]), []).append(len(job.runs))
    return out


def test_a_change_of_the_measured_table_changes_the_plan(policy):
    policy(TABLE)
    # measured sizes as chosen; 4 takes 8's decision (the next larger measured batch), 16 and
    # above take 32's, and CUDA (no entry) never packs
    expect = {2: 5, 4: 2, 8: 2, 16: 1, 32: 1, 64: 1, 128: 1}
    assert {b: grid.pack_size("auto", b, "cpu") for b in expect} == expect
    assert all(grid.pack_size("auto", b, "cuda") == 1 for b in expect)
    cfgs = full_batch_sweep()  # 2 norms x 7 batch sizes x 5 seeds
    sizes = job_sizes(cfgs)

    def chunks(n, k):  # n seeds in packs of at most k
        return [min(k, n - i) for i in range(0, n, k)]

    assert sizes == {key: chunks(5, expect[key[1]]) for key in sizes}
    assert sum(len(v) for v in sizes.values()) == 2 * (1 + 3 + 3 + 5 + 5 + 5 + 5)

    # a new measurement where GN loses at batch 8 with K=2 too: batch 8 (and 4) stop packing
    changed = [r if (r["batch"], r["k"], r["norm"]) != (8, 2, "gn") else ratio("gn", 8, 2, 1.0)
               for r in TABLE]  # fmt: skip
    policy(changed)
    assert grid.pack_size("auto", 8, "cpu") == grid.pack_size("auto", 4, "cpu") == 1
    after = job_sizes(cfgs)
    assert after[("bn", 8)] == after[("gn", 4)] == [1] * 5 and after[("bn", 2)] == [5]
    # and a CUDA entry makes CUDA pack, leaving the CPU's as it was
    policy([ratio("bn", 2, 5, 3.0), ratio("gn", 2, 5, 2.5)], device="cuda")
    assert grid.pack_size("auto", 2, "cuda") == 5 and grid.pack_size("auto", 8, "cuda") == 5
    assert grid.pack_size("auto", 2, "cpu") == 5 and grid.pack_size("auto", 8, "cpu") == 1


def test_unmeasured_devices_do_not_pack_and_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv(pack_policy.ENV_PATH, str(tmp_path / "absent.json"))
    assert grid.pack_size("auto", 2, "cuda") == grid.pack_size("auto", 2, "cpu") == 1
    assert grid.pack_size(3, 2, "cuda") == 3 and grid.pack_size("off", 2, "cpu") == 1
    assert "cuda: not measured" in pack_policy.describe("cuda")


def test_a_bad_policy_names_the_file_and_the_entry(policy):
    path = policy(TABLE)
    data = json.loads(path.read_text())
    del data["devices"]["cpu"]["ratios"][3]["median"]
    path.write_text(json.dumps(data))
    with pytest.raises(pack_policy.PolicyError, match=r"devices\.cpu\.ratios\[3\].*median"):
        grid.pack_size("auto", 2, "cpu")
    path.write_text("{not json")
    with pytest.raises(pack_policy.PolicyError, match="pack_policy.json: not a readable"):
        grid.pack_size("auto", 2, "cpu")
    with pytest.raises(pack_policy.PolicyError, match="missing median"):
        pack_policy.record("cpu", [{"norm": "bn", "batch": 2, "k": 2}], "t", "m")


def test_the_committed_cpu_table_is_a_stable_measurement_read_by_this_rule():
    """benchmarks/pack_policy.json's CPU entry comes from pack_throughput.py with several rounds
    for both norms, and auto's K per batch size is the rule re-derived here from its numbers."""
    entry = json.loads((ROOT / "benchmarks" / "pack_policy.json").read_text())["devices"]["cpu"]
    assert (
        "benchmarks/pack_throughput.py" in entry["source"] and "--write-policy" in entry["source"]
    )
    cells = entry["ratios"]
    assert all(c["rounds"] >= 5 and c["low"] <= c["median"] <= c["high"] for c in cells)
    batches = sorted({c["batch"] for c in cells})
    for batch in batches:
        worst = {}  # K -> the lowest median over the norms
        for c in (c for c in cells if c["batch"] == batch):
            worst[c["k"]] = min(worst.get(c["k"], math.inf), c["median"])
        assert {c["norm"] for c in cells if c["batch"] == batch} == {"bn", "gn"}
        best_k = max(worst, key=worst.get)
        expect = best_k if worst[best_k] > 1.05 else 1
        assert (
            pack_policy.auto_pack_size(batch, "cpu", ROOT / "benchmarks" / "pack_policy.json")
            == expect
        )


# ---------------------------------------------------------------- CUDA switches


def measured(parity_mean, compile_gains=(), cl=1.1, bf16=1.5, cl_bf16=1.9):
    return {"speed": {"cl": [cl, cl], "bf16": [bf16, bf16], "cl_bf16": [cl_bf16, cl_bf16]},
            "compile": list(compile_gains), "parity": {"mean": parity_mean}}  # fmt: skip


def test_cuda_switches_follow_the_recorded_measurement(tmp_path, monkeypatch):
    path = tmp_path / "switch_policy.json"
    monkeypatch.setenv(switch_policy.ENV_PATH, str(path))
    assert switch_policy.cuda_switches() == switch_policy.UNMEASURED  # nothing measured: as before
    switch_policy.record(measured(-0.002, [1.3, 1.2]), "test", "GPU")
    assert switch_policy.cuda_switches() == {"channels_last": True, "bf16": True, "compile": True}
    # bf16 loses two points: off, and the faster of the fp32 settings (channels_last) is kept
    switch_policy.record(measured(-0.02, [1.01]), "test", "GPU")
    assert switch_policy.cuda_switches() == {"channels_last": True, "bf16": False, "compile": False}
    # channels_last slower than NCHW, and bf16 alone the fastest
    switch_policy.record(measured(0.0, [], cl=0.9, bf16=2.0, cl_bf16=1.8), "test", "GPU")
    assert switch_policy.cuda_switches() == {"channels_last": False, "bf16": True,
                                             "compile": switch_policy.UNMEASURED["compile"]}  # fmt: skip
    # the parity runs did not run: bf16 as before any measurement
    switch_policy.record({**measured(0.0), "parity": None}, "test", "GPU")
    assert switch_policy.cuda_switches()["bf16"] is switch_policy.UNMEASURED["bf16"]
    body = json.loads(path.read_text())
    assert body["decision"] == switch_policy.cuda_switches() and body["machine"] == "GPU"
    assert any("unmeasured (unchanged)" in why for why in body["why"])
