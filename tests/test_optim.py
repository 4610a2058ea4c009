"""src/optim.py against formulas written out by hand: schedules, weight-decay groups, AGC."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normrepro import optim

BASE = {"momentum": 0.9, "nesterov": False, "weight_decay": 1e-4, "wd_on_norm": True}
BASE |= {"warmup_epochs": 0, "schedule": "constant"}


def lrs(epochs: int, steps: int = 1, **cfg) -> list[float]:
    """The lr of the first step of each epoch."""
    cfg = {**BASE, **cfg}
    return [optim.lr_at(cfg, 0.1, epochs, e, 0, steps) for e in range(epochs)]


def test_step_schedule_of_seed_000():
    # lr 0.1 divided by 5 at epochs 60, 90, 120, 200 (0-based epoch index at which it applies)
    got = lrs(250, schedule="step", milestones=[60, 90, 120, 200], factor=0.2)
    for epoch, want in [(0, 0.1), (59, 0.1), (60, 0.02), (89, 0.02), (90, 0.004),
                        (120, 0.0008), (199, 0.0008), (200, 0.00016), (249, 0.00016)]:  # fmt: skip
        assert got[epoch] == pytest.approx(want, rel=1e-12), epoch


@pytest.mark.parametrize(
    ("epochs", "n_drops", "drops"),
    [(100, 3, [25, 50, 75]), (100, 2, [33, 66]), (2, 1, [1]), (2, 3, [1, 1, 1])],
)
def test_evenly_divides_by_ten_at_evenly_spaced_epochs(epochs, n_drops, drops):
    cfg = {"schedule": "evenly", "n_drops": n_drops, "factor": 0.1}
    assert optim.drop_epochs({**BASE, **cfg}, epochs) == drops
    got = lrs(epochs, **cfg)
    for epoch in range(epochs):
        assert got[epoch] == pytest.approx(0.1 * 0.1 ** sum(epoch >= d for d in drops))


def test_cosine_and_constant():
    got = lrs(10, schedule="cosine")
    assert got[0] == pytest.approx(0.1)
    assert got[5] == pytest.approx(0.05)  # halfway: cos(pi / 2) = 0
    assert got[9] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert all(a > b for a, b in zip(got, got[1:], strict=False))
    assert lrs(5) == [0.1] * 5


def test_linear_warmup_per_step_then_the_schedule():
    cfg = {**BASE, "schedule": "cosine", "warmup_epochs": 2}
    warm = [optim.lr_at(cfg, 0.1, 12, e, s, 4) for e in range(2) for s in range(4)]
    assert warm == pytest.approx([0.1 * k / 8 for k in range(1, 9)])
    assert optim.lr_at(cfg, 0.1, 12, 2, 0, 4) == pytest.approx(0.1)  # cosine starts after warmup
    assert optim.lr_at(cfg, 0.1, 12, 7, 3, 4) == pytest.approx(0.05)  # (7 - 2) / (12 - 2)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2)
    )


@pytest.mark.parametrize("wd_on_norm", [True, False])
def test_weight_decay_skips_1d_params_unless_wd_on_norm(wd_on_norm):
    net = _net()
    opt = optim.make_optimizer(net, 0.1, {**BASE, "wd_on_norm": wd_on_norm, "nesterov": True})
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    free = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    matrices = {id(net[0].weight), id(net[3].weight)}
    vectors = {id(net[1].weight), id(net[1].bias), id(net[3].bias)}
    assert decayed == (matrices | vectors if wd_on_norm else matrices)
    assert free == (set() if wd_on_norm else vectors)
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)


def test_agc_clips_per_output_unit_and_spares_the_last_linear():
    torch.manual_seed(0)
    net = _net()
    conv, bn, fc = net[0], net[1], net[3]
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    conv.weight.grad[0] *= 1e-4  # unit 0: far under the threshold, must stay as it is
    before = {name: p.grad.clone() for name, p in net.named_parameters()}
    params = optim.clipped_params(net)
    assert {id(p) for p in params} == {id(conv.weight), id(bn.weight), id(bn.bias)}
    clip = 0.05
    optim.adaptive_clip_grad_(params, clip=clip, eps=1e-3)

    for unit in range(4):  # conv weight [4, 3, 3, 3]: one norm per output channel
        w, g = conv.weight[unit].detach(), before["0.weight"][unit]
        ratio = g.norm() / max(w.norm(), 1e-3)
        want = g * (clip / ratio) if ratio > clip else g
        torch.testing.assert_close(conv.weight.grad[unit], want)
    torch.testing.assert_close(conv.weight.grad[0], before["0.weight"][0])
    # BN gain (all ones, norm 2) and bias (all zeros: ||W|| floored at eps) are one unit each
    for name, p in (("1.weight", bn.weight), ("1.bias", bn.bias)):
        g = before[name]
        max_norm = clip * max(p.detach().norm().item(), 1e-3)
        torch.testing.assert_close(p.grad, g * min(1.0, max_norm / g.norm().item()))
    torch.testing.assert_close(fc.weight.grad, before["3.weight"])  # the classifier: untouched
    torch.testing.assert_close(fc.bias.grad, before["3.bias"])
