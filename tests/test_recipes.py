"""Each study's runs are what its seed says: groups per norm layer, lr drops, weight decay.

The expectations are written out here from the seeds (001: ResNet-20 GN with G = 8, lr / 10 at
30, 60, 90 of 100 epochs; 002: NF-ResNet gains are gains, not weights), not read back from the
code that builds the runs.
"""

from __future__ import annotations

import pytest
import torch

from normrepro import config, grid, optim
from normrepro.models import build_model
from normrepro.norms import norm_layer_groups
from normrepro.run_config import resolve_run_config

PARAMS = config.load_params()


def _expected_groups(norm: str, norm_kw: dict, channels: int) -> int | None:
    """What a norm with these keywords must normalize over on a layer of `channels` channels."""
    if norm in ("bn", "bn_ws"):
        return None
    if norm == "ln":
        return 1
    if norm == "in":
        return channels
    if "groups" in norm_kw:
        return norm_kw["groups"]
    if "channels_per_group" in norm_kw:
        return channels // norm_kw["channels_per_group"]
    return min(32, channels) if 32 % min(32, channels) == 0 else None  # BiT's 32, capped


def _distinct_cells(study: str) -> list[dict]:
    seen, out = set(), []
    for run in grid.study_runs(PARAMS, study):
        key = (run["model"], run["norm"], str(run["norm_kw"]), str(run["model_kw"]))
        if key not in seen:
            seen.add(key)
            out.append(run)
    return out


@pytest.mark.parametrize("study", ["batch_sweep", "group_sweep", "norm_compare"])
def test_every_norm_layer_has_the_groups_the_study_says(study):
    for run in _distinct_cells(study):
        model = build_model(run["model"], run["norm"], **run["model_kw"], **run["norm_kw"])
        layers = norm_layer_groups(model)
        assert len(layers) == 19 + 2  # ResNet-20: stem + 18 block norms + 2 projection norms
        for name, channels, groups in layers:
            want = _expected_groups(run["norm"], run["norm_kw"], channels)
            assert groups == want, (run["run_id"], name, channels, groups, want)
        # The run config's record of the grouping is the built model's.
        built = {str(c): g for _, c, g in layers if g is not None}
        assert run["norm_groups"] == built, run["run_id"]


def test_gn_on_resnet20_means_g8_wherever_a_study_says_gn():
    """Seed 001 chose G = 8 for ResNet-20: no ResNet-20 'gn' / 'gn_ws' run may fall back to
    min(32, C) groups, which is InstanceNorm on the 16- and 32-channel stages."""
    for study in ("batch_sweep", "norm_compare"):
        for run in grid.study_runs(PARAMS, study):
            if run["model"] == "resnet20" and run["norm"] in ("gn", "gn_ws"):
                assert run["norm_groups"] == {"16": 8, "32": 8, "64": 8}, run["run_id"]


def test_group_sweep_g16_is_in_only_on_the_first_stage():
    runs = [r for r in grid.study_runs(PARAMS, "group_sweep") if r["norm_kw"] == {"groups": 16}]
    assert runs
    cpg = {int(c): int(c) // g for c, g in runs[0]["norm_groups"].items()}
    assert cpg == {16: 1, 32: 2, 64: 4}  # IN on stage 1 only: 1, 2, 4 channels per group


@pytest.mark.parametrize("scale", ["full", "smoke", "laptop"])
def test_resnet20_lr_drops_at_30_60_90_percent_of_the_run(scale):
    params = config.load_params(overrides={"scale": scale})
    for study in ("batch_sweep", "norm_compare"):
        runs = grid.study_runs(params, study)
        if not runs:
            continue
        run = resolve_run_config(runs[0])  # what train.py reads (defaults filled in)
        epochs, opt = run["epochs"], run["optim"]
        peak = 0.1 * run["batch_size"] / 128  # linear scaling from 0.1 at batch 128
        assert run["lr"] == pytest.approx(peak)
        # seed 001: lr / 10 at epochs 30, 60, 90 of 100; a shorter run keeps the fractions.
        drops = sorted({max(1, round(f * epochs)) for f in (0.3, 0.6, 0.9)})
        for epoch in range(epochs):
            want = peak * 0.1 ** sum(epoch >= d for d in drops)
            got = optim.lr_at(opt, run["lr"], epochs, epoch, 0, 10)
            assert got == pytest.approx(want, rel=1e-12), (scale, study, epoch)
        if scale == "full":
            assert epochs == 100
            assert [optim.lr_at(opt, 1.0, 100, e, 0, 1) for e in (29, 30, 59, 60, 89, 90)] == (
                pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01, 0.001])
            )


def test_nf_resnet_gains_are_not_weight_decayed():
    run = grid.study_runs(PARAMS, "nf_final")[0]
    assert run["optim"]["wd_on_norm"] is False
    model = build_model(run["model"], run["norm"], **run["model_kw"])
    opt = optim.make_optimizer(model, run["lr"], run["optim"])
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    gains = [p for n, p in model.named_parameters() if n.endswith(".gain")]
    convs = [p for n, p in model.named_parameters() if n.endswith(".weight") and p.ndim == 4]
    assert gains and all(p.ndim == 4 for p in gains)  # [out, 1, 1, 1]: an ndim test misses them
    assert not any(id(p) in decayed for p in gains)
    assert all(id(p) in decayed for p in convs)
    # Every parameter is in exactly one group.
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_norm_parameters_of_every_norm_layer_are_exempt_by_role():
    model = build_model("resnet20", "gn", groups=8)
    names = optim.no_decay_names(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.GroupNorm):
            assert {f"{name}.weight", f"{name}.bias"} <= names
    assert not any(n.endswith("conv1.weight") for n in names)
