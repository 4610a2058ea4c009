"""Packed seeds (src/packing.py): K runs fused into one model train exactly as K separate runs.

The separate runs here are the plain models of src/models/ with nn.Dropout drawing from the
global RNG and one SGD each (src/optim.py), independently of the packing code.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_faults import (
    BROKEN_DATA,
    expand,
    grid_folder,
    make_params,
    make_repo,
    planned_configs,
    run_dirs,
    snakemake,
    undecodable_images,
    write_params,
)
from test_train import ROOT, history, make_cfg, metrics

from normrepro import catalog, checkpoint, config, grid, record_failure, runs, train
from normrepro.models import build_model
from normrepro.optim import adaptive_clip_grad_, clipped_params, make_optimizer
from normrepro.packing import PackedModel, PackError, pack_optimizer_states, unpack_optimizer_state

torch.set_num_threads(1)
# torch.compile on the CPU (inductor) needs a C++ compiler; without one the test runs the rest.
COMPILE_WORKS = shutil.which("g++") is not None or shutil.which("c++") is not None

# A tiny member of every family (cifar stems: 16x16 images keep every map > 1x1).
SMALL = {
    "resnet": ("resnet20", {"depth": 8, "base_width": 4}),
    "bottleneck_resnet": ("resnet164", {"depth": 11, "base_width": 4}),
    "preact_resnet": ("preact_resnet164", {"depth": 11, "base_width": 4}),
    "wrn": ("wrn10_1", {"base_width": 4, "dropout": 0.3}),
    "nf_resnet": ("nf_resnet", {"blocks_per_stack": 1, "base_width": 4}),
    "imagenet_basic": ("resnet34", {"base_width": 4, "stem": "cifar"}),
    "imagenet_bottleneck": ("resnet50", {"base_width": 4, "stem": "cifar"}),
}
CASES = [
    pytest.param(name, norm, kw, id=f"{name}-{norm}")
    for name, kw in SMALL.values()
    for norm in catalog.allowed_norms(name)
]
SEEDS = (3, 7, 11)
BATCH, SIZE, CLASSES = 4, 16, 10
RTOL = 1e-5


@pytest.fixture
def float64():
    """Exactness is checked in float64: in float32 a pre-activation within ~1e-7 of zero can flip
    its ReLU between two equally valid summation orders (grouped vs plain conv), and that one
    element changes a whole BatchNorm channel's gradient; float64 leaves only structure."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def optim_cfg(norm: str) -> dict:
    # wd_on_norm false: the packed net must exempt the same params by role as a member does.
    cfg = {"momentum": 0.9, "nesterov": norm == "none", "weight_decay": 5e-4, "wd_on_norm": False}
    return cfg


def members(name, norm, kw):
    """Each member built as its separate run builds it: torch.manual_seed(seed), then init."""
    out = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        out.append(build_model(name, norm, CLASSES, 3, **kw))
    return out


def batches(steps: int):
    """Per step, per member: its own images and labels."""
    g = torch.Generator().manual_seed(0)
    return [
        [
            (torch.randn(BATCH, 3, SIZE, SIZE, generator=g),
             torch.randint(0, CLASSES, (BATCH,), generator=g))
            for _ in SEEDS
        ]
        for _ in range(steps)
    ]  # fmt: skip


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, what
    assert rel_err(a, b) <= RTOL, f"{what}: relative error {rel_err(a, b):.2e}"


def separate_steps(model, data, norm, dropout_seed, lr=0.05, agc=None):
    """Plain training of one member: losses, grads and state after each step."""
    opt = make_optimizer(model, lr, optim_cfg(norm))
    record = []
    torch.manual_seed(dropout_seed)  # nn.Dropout draws from the global RNG, as a separate run
    for x, y in data:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if agc:
            adaptive_clip_grad_(clipped_params(model), agc)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        state = {n: t.clone() for n, t in model.state_dict().items()}
        record.append((loss.detach(), grads, state))
    return record, opt


def packed_steps(models, data_per_step, norm, lr=0.05, agc=None):
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(len(models))]
    pack = PackedModel(models, gens)
    opt = make_optimizer(pack.net, lr, optim_cfg(norm))
    record = []
    for step_data in data_per_step:
        x = torch.cat([x for x, _ in step_data], 1)  # [B, K*3, H, W]
        y = torch.stack([y for _, y in step_data], 1)  # [B, K]
        logits = pack(x)  # [B, K, classes]
        losses = torch.stack([F.cross_entropy(logits[:, k], y[:, k]) for k in range(len(models))])
        opt.zero_grad()
        losses.sum().backward()
        if agc:
            adaptive_clip_grad_(clipped_params(pack.net), agc, members=len(models))
        grads = [
            {n: p.grad.chunk(len(models), 0)[k].clone() for n, p in pack.net.named_parameters()}
            for k in range(len(models))
        ]
        opt.step()
        record.append((losses.detach(), grads, pack.member_states()))
    return record, pack, opt


@pytest.mark.parametrize("name, norm, kw", CASES)
def test_packed_steps_equal_separate_steps(name, norm, kw, float64):
    agc = 0.01 if norm == "none" else None  # NF-ResNets: AGC per member
    models = members(name, norm, kw)
    data = batches(2)  # two steps: momentum and weight decay act on the second
    packed, pack, _ = packed_steps([copy.deepcopy(m) for m in models], data, norm, agc=agc)
    for k, model in enumerate(models):
        separate, _ = separate_steps(model, [step[k] for step in data], norm, 1000 + k, agc=agc)
        for step, ((loss, grads, state), (p_losses, p_grads, p_states)) in enumerate(
            zip(separate, packed, strict=True)
        ):
            assert_close(p_losses[k], loss, f"member {k} step {step} loss")
            assert set(p_grads[k]) == set(grads)
            for n in grads:
                assert_close(p_grads[k][n], grads[n], f"member {k} step {step} grad {n}")
            assert set(p_states[k]) == set(state)  # the member's own state_dict keys
            for n in state:
                if state[n].is_floating_point():
                    assert_close(p_states[k][n], state[n], f"member {k} step {step} {n}")
                else:
                    assert torch.equal(p_states[k][n], state[n]), n


def test_packed_eval_equals_separate_eval_and_members_differ(float64):
    name, kw = SMALL["wrn"]
    models = members(name, "bn", kw)
    gens = [torch.Generator() for _ in models]
    pack = PackedModel([copy.deepcopy(m) for m in models], gens).eval()
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        out = pack(x.repeat(1, len(models), 1, 1))  # every member sees the same images
        for k, m in enumerate(models):
            assert_close(out[:, k], m.eval()(x), f"member {k} eval logits")
    assert rel_err(out[:, 0], out[:, 1]) > 1e-2  # different seeds: different nets


def test_optimizer_state_round_trip():
    name, kw = SMALL["resnet"]
    models = members(name, "gn", kw)
    data = batches(1)
    _, pack, opt = packed_steps(models, data, "gn")
    per_member = unpack_optimizer_state(opt.state_dict(), len(models))
    bufs = [s["state"][0]["momentum_buffer"] for s in per_member]
    assert (
        bufs[0].shape[0] * len(models) == opt.state_dict()["state"][0]["momentum_buffer"].shape[0]
    )
    again = pack_optimizer_states(per_member)
    for idx, entry in opt.state_dict()["state"].items():
        assert torch.equal(again["state"][idx]["momentum_buffer"], entry["momentum_buffer"])


def test_a_frozen_member_leaves_the_others_unchanged(float64):
    """Divergence of member 1 (NaN weights): freezing it keeps the others' next step exact."""
    name, kw = SMALL["resnet"]
    models = members(name, "bn", kw)
    data = batches(1)
    gens = [torch.Generator() for _ in models]
    pack = PackedModel([copy.deepcopy(m) for m in models], gens)
    opt = make_optimizer(pack.net, 0.05, optim_cfg("bn"))
    with torch.no_grad():
        pack.net.stem[0].weight.chunk(3, 0)[1].fill_(float("nan"))
    pack.freeze_member_(1, opt)
    x = torch.cat([x for x, _ in data[0]], 1)
    y = torch.stack([y for _, y in data[0]], 1)
    logits = pack(x)
    assert torch.isfinite(logits).all()
    loss = sum(F.cross_entropy(logits[:, k], y[:, k]) for k in (0, 2))  # member 1 left out
    opt.zero_grad()
    loss.backward()
    opt.step()
    states = pack.member_states()
    for k in (0, 2):
        separate, _ = separate_steps(models[k], [data[0][k]], "bn", 0)
        for n, t in separate[0][2].items():
            if t.is_floating_point():
                assert_close(states[k][n], t, f"member {k} {n}")
    assert all(
        not t.is_floating_point() or t.abs().sum() == 0 for t in states[1].values()
    )  # the frozen member stayed at zero


def test_an_unpackable_layer_is_named():
    models = [torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.LayerNorm([4, 2, 2]))] * 2
    with pytest.raises(PackError, match=r"layer 1 \(LayerNorm\) cannot be packed"):
        PackedModel(models, [torch.Generator()] * 2)
    # A pack of one takes any model as it is.
    PackedModel(models[:1], [torch.Generator()])


# ---------------------------------------------------------------- the trainer: src/train.py


def pack_args(tmp_path: Path, cfgs: list[dict], tag: str) -> list[str]:
    """train.py arguments for a pack of these runs (tmp_path/<tag>/<run_id>)."""
    args = []
    for cfg in cfgs:
        path = tmp_path / f"{tag}-{cfg['run_id']}.json"
        path.write_text(json.dumps(cfg))
        args += ["--config", str(path), "--out", str(tmp_path / tag / cfg["run_id"])]
    return args


def seeds_of_one_cell(seeds=(0, 1, 2), **top) -> list[dict]:
    return [make_cfg(seed=s, run_id=f"resnet8-bn-bs32-s{s}", **top) for s in seeds]


def outcome(run_dir: Path) -> tuple[dict, list[dict]]:
    m = metrics(run_dir)
    keep = ("status", "diverged_epoch", "epochs_done", "test_acc", "test_loss", "val_acc")
    return {k: m[k] for k in keep}, history(run_dir)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_packed_cell_gives_each_run_its_separate_result(tmp_path, one_thread):
    cfgs = seeds_of_one_cell()
    assert train.main(pack_args(tmp_path, cfgs, "packed")) == 0
    for cfg in cfgs:
        assert train.main(pack_args(tmp_path, [cfg], "alone")) == 0
        packed, alone = tmp_path / "packed" / cfg["run_id"], tmp_path / "alone" / cfg["run_id"]
        mp, ma = metrics(packed), metrics(alone)
        assert set(mp) == set(ma) and mp["status"] == ma["status"] == "ok"
        assert mp["config_hash"] == ma["config_hash"] and mp["run_id"] == cfg["run_id"]
        assert abs(mp["test_acc"] - ma["test_acc"]) <= 0.005, cfg["run_id"]  # 0.5 points
        assert [r["epoch"] for r in history(packed)] == ["1", "2"]
        for name in ("config.json", "train.log", "history.tsv", "checkpoint.pt"):
            assert (packed / name).exists(), name
        # The checkpoint is the run's own: its model keys and shapes, its seed's data RNG.
        sp = torch.load(packed / "checkpoint.pt", weights_only=True)
        sa = torch.load(alone / "checkpoint.pt", weights_only=True)
        assert {k: v.shape for k, v in sp["model"].items()} == {
            k: v.shape for k, v in sa["model"].items()
        }
        assert torch.equal(sp["rng"]["data"], sa["rng"]["data"])  # same draws, same count
        assert torch.equal(sp["rng"]["cpu"], sa["rng"]["cpu"])
        assert "packed: 3 runs trained as one model" in (packed / "train.log").read_text()
    accs = {metrics(tmp_path / "packed" / c["run_id"])["test_loss"] for c in cfgs}
    assert len(accs) == 3  # three seeds, three different runs


def test_a_diverging_run_stops_alone(tmp_path, one_thread, monkeypatch):
    """Run s1's inputs turn to NaN in epoch 2 (its loss diverges): s1 is recorded diverged at
    epoch 2; s0 and s2 end exactly as in the same pack without the fault."""
    cfgs = seeds_of_one_cell(epochs=3)
    assert train.main(pack_args(tmp_path, cfgs, "clean")) == 0
    calls = {"n": 0}
    batch = train.EpochLoop.batch
    steps = math.ceil(300 / 32)

    def faulty(self, parts):
        x, y = batch(self, parts)
        calls["n"] += 1
        if calls["n"] == steps + 3:  # epoch 2, step 3
            x = x.clone()
            x[:, 3:6] = float("nan")  # run 1's channels: [3, 6) of [B, 3 * 3, H, W]
        return x, y

    monkeypatch.setattr(train.EpochLoop, "batch", faulty)
    assert train.main(pack_args(tmp_path, cfgs, "faulty")) == 0
    bad = metrics(tmp_path / "faulty" / cfgs[1]["run_id"])
    assert bad["status"] == "diverged" and bad["diverged_epoch"] == 2 and bad["epochs_done"] == 1
    assert (
        history(tmp_path / "faulty" / cfgs[1]["run_id"])
        == history(tmp_path / "clean" / cfgs[1]["run_id"])[:1]
    )
    for cfg in (cfgs[0], cfgs[2]):
        faulty_run = outcome(tmp_path / "faulty" / cfg["run_id"])
        assert faulty_run == outcome(tmp_path / "clean" / cfg["run_id"]), cfg["run_id"]
        assert faulty_run[0]["status"] == "ok" and faulty_run[0]["epochs_done"] == 3


def test_a_killed_pack_resumes_every_run_as_if_never_killed(tmp_path):
    cfgs = seeds_of_one_cell(epochs=4, optim={**make_cfg()["optim"], "milestones": [3]})
    assert train.main(pack_args(tmp_path, cfgs, "whole")) == 0
    args = pack_args(tmp_path, cfgs, "killed")
    dirs = [tmp_path / "killed" / c["run_id"] for c in cfgs]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "train.py"), *args], stderr=subprocess.DEVNULL, env=env
    )
    try:  # kill it once epoch 2 is checkpointed for every run (it is then in epoch 3)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if all((d / checkpoint.PREVIOUS).exists() for d in dirs):
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not any((d / "metrics.json").exists() for d in dirs), "ended before the kill"
    assert train.main(args) == 0
    for cfg, d in zip(cfgs, dirs, strict=True):
        assert "resuming from" in (d / "train.log").read_text()
        assert outcome(d) == outcome(tmp_path / "whole" / cfg["run_id"]), cfg["run_id"]


def test_runs_of_different_cells_cannot_be_packed(tmp_path, capsys):
    cfgs = [make_cfg(seed=0), make_cfg(seed=1, lr=0.01, run_id="other")]
    assert train.main(pack_args(tmp_path, cfgs, "bad")) == 2
    err = capsys.readouterr().err
    assert "config key 'lr' is 0.05 in run resnet8-bn-bs32-s0 and 0.01 in run other" in err
    assert not (tmp_path / "bad").exists()  # nothing written


def test_every_runtime_switch_runs_on_the_cpu(tmp_path, one_thread, monkeypatch):
    """channels_last, bf16 autocast and torch.compile, switched on for the CPU: the code path
    CUDA takes trains a pack here, to about the accuracy of plain fp32."""
    cfgs = seeds_of_one_cell((0, 1), epochs=2)
    monkeypatch.setitem(
        train.DEVICE_SWITCHES, "cpu", dict.fromkeys(train.DEVICE_SWITCHES["cpu"], False)
    )
    assert train.main(pack_args(tmp_path, cfgs, "plain")) == 0
    switches = {"channels_last": True, "bf16": True, "compile": COMPILE_WORKS}
    monkeypatch.setitem(train.DEVICE_SWITCHES, "cpu", switches)
    assert train.main(pack_args(tmp_path, cfgs, "switched")) == 0
    for cfg in cfgs:
        fast, plain = (metrics(tmp_path / t / cfg["run_id"]) for t in ("switched", "plain"))
        assert fast["status"] == "ok" and abs(fast["test_acc"] - plain["test_acc"]) <= 0.05
        assert fast["test_loss"] != plain["test_loss"]  # bf16 did change the arithmetic


# ---------------------------------------------------------------- the planner and the grid


def test_the_grid_fixes_each_pack_and_asks_again_for_one_with_an_unfinished_run(tmp_path):
    """A pack is a job of the grid: a cell's seeds in chunks of K, whatever is on disk. A pack
    whose runs all finished is done (its record stands); one with a failed or missing run is
    asked for again (its next attempt), and trains only that run."""
    cfgs = expand(make_params(n_seeds=5, lrs=[0.05, 0.1]))
    results = tmp_path / "results"

    def plan(setting=3):
        return [[c["run_id"] for c in job.runs] for job in grid.jobs(cfgs, setting, "cpu")]

    packs = plan()
    # one cell per lr, seeds ascending, chunks of 3
    assert [[r.rsplit("-s", 1)[1] for r in p] for p in packs] == [["0", "1", "2"], ["3", "4"]] * 2
    assert all(len({runs.cell_key(c) for c in cfgs if c["run_id"] in p}) == 1 for p in packs)
    assert plan("off") == [[r] for p in packs for r in p]
    assert plan("auto") == plan("off")  # batch 32: the CPU policy does not pack it

    # The first pack finishes: every pack stays as it was; only the first one is done.
    jobs = grid.jobs(cfgs, 3, "cpu")
    for cfg in cfgs[:3]:
        d = runs.run_dir(results, cfg)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(
            json.dumps({"status": "ok", "config_hash": cfg["config_hash"]})
        )
    assert plan() == packs
    assert [grid.record_attempt(results, job, 0) for job in jobs] == [0, 1, 1, 1]
    # A failed run is unfinished: its pack is asked for again, and that run is what it trains.
    (runs.run_dir(results, cfgs[1]) / "metrics.json").write_text(
        json.dumps({"status": "failed", "config_hash": cfgs[1]["config_hash"]})
    )
    assert grid.record_attempt(results, jobs[0], 0) == 1
    unfinished = [
        c["run_id"]
        for c in jobs[0].runs
        if not runs.finished(runs.run_dir(results, c), c["config_hash"])
    ]
    assert unfinished == [cfgs[1]["run_id"]]


def planned_jobs(repo: Path) -> list[list[str]]:
    """'study/run' of the runs of each train job `snakemake -n` plans (its pack)."""
    out = snakemake(repo, "-n", "--cores", "1").stdout
    params = config.load_params(repo / "params.yaml")
    jobs = {(j.study, j.id): j for cfgs in grid.plan(params).values()
            for j in grid.jobs(cfgs, params["runtime"]["pack"], "cpu")}  # fmt: skip
    found = re.findall(r"wildcards: study=(\w+), job=(\S+), attempt=\d+", out)
    return [[f"{study}/{c['run_id']}" for c in jobs[(study, job)].runs] for study, job in found]


def to_train(repo: Path) -> set[str]:
    """The runs the planned train jobs would train: their runs that have not finished."""
    by_name = {f"{c['study']}/{c['run_id']}": c for c in planned_configs(repo)}
    return {
        name
        for pack in planned_jobs(repo)
        for name in pack
        if not runs.finished(
            runs.run_dir(repo / "results", by_name[name]), by_name[name]["config_hash"]
        )
    }


@pytest.mark.slow
def test_packed_grid_reruns_failures_and_adds_seeds_alone(tmp_path):
    """With runtime.pack 2: one job per pack; a crashing pack records `failed` for each of its
    runs with its log; the next invocation trains only those; a new seed trains alone."""
    params = make_params(n_seeds=3)
    params["runtime"]["pack"] = 2
    params["studies"]["broken"] = {
        **params["studies"]["grid"],
        "title": "runs that crash",
        "data": BROKEN_DATA,
    }
    repo = make_repo(tmp_path, params)
    undecodable_images(repo)
    jobs = planned_jobs(repo)
    packs = sorted(p for p in jobs if len(p) > 1)
    assert [len(p) for p in packs] == [2, 2] and len(jobs) - len(packs) == 2  # s0+s1, s2 alone
    assert snakemake(repo, "--cores", "2", check=False).returncode == 1  # runs failed

    name = grid_folder(repo)
    for job in grid.jobs([c for c in planned_configs(repo)], 2, "cpu"):
        log = str(grid.record_path("results", name, job.study, job.id, 0).with_suffix(".log"))
        for cfg in job.runs:
            m = metrics(runs.run_dir(repo / "results", cfg))
            if job.study == "grid":
                assert m["status"] == "ok", cfg["run_id"]
            else:
                assert (m["status"], m["log_path"]) == ("failed", log)
                assert "cannot decode broken-images/train/cat/" in (repo / log).read_text()
    packed = [runs.run_dir(repo / "results", c) for c in planned_configs(repo)
              if f"{c['study']}/{c['run_id']}" in packs[1]]  # fmt: skip
    assert len(packed) == 2  # grid's pack: a real pack
    assert all(
        "packed: 2 runs trained as one model" in (d / "train.log").read_text() for d in packed
    )

    broken = {f"broken/{d.name}" for d in run_dirs(repo) if d.parent.name == "broken"}
    assert to_train(repo) == broken

    params["studies"]["grid"]["n_seeds"] = 4
    write_params(repo, params)
    new = to_train(repo) - broken
    assert new == {f"grid/{planned_configs(repo)[3]['run_id']}"}  # only the new seed


def test_a_crashed_pack_records_its_unfinished_runs_as_failed(tmp_path):
    cfgs = [{**c, "config_hash": config.config_hash(c)} for c in seeds_of_one_cell((0, 1))]
    args = pack_args(tmp_path, cfgs, "crashed")
    dirs = [tmp_path / "crashed" / c["run_id"] for c in cfgs]
    dirs[0].mkdir(parents=True)
    done = {"status": "diverged", "config_hash": cfgs[0]["config_hash"]}
    (dirs[0] / "metrics.json").write_text(json.dumps(done))  # ended before the crash
    logs = [str(d / "job.log") for d in dirs]
    code = record_failure.main([*args, "--log", logs[0], "--log", logs[1], "--exit-code", "137"])
    assert code == 0
    assert metrics(dirs[0]) == done  # kept
    failed = metrics(dirs[1])
    assert (failed["status"], failed["log_path"], failed["exit_code"]) == ("failed", logs[1], 137)
    assert failed["config_hash"] == cfgs[1]["config_hash"]
