"""Norm registry: each norm against its formula written out here, and its errors."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from test_train import make_cfg, metrics, run
from torch import nn

from normrepro import catalog, norm_registry, optim
from normrepro.models import build_model
from normrepro.norm_registry import NormSpec
from normrepro.norms import (
    GAMMA_RELU,
    BatchNorm2d,
    ScaledStdConv2d,
    StdConv2d,
    conv_for_norm,
    layer_factories,
    make_norm,
)
from normrepro.studies.common import norm_label

torch.set_num_threads(1)


def group_norm_formula(x, groups, weight, bias, eps=1e-5):
    """Wu & He's GN: reshape [N, C, H, W] to [N, G, C/G * H * W], normalize, per-channel affine."""
    n, c, h, w = x.shape
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(-1, keepdim=True)  # biased
    out = ((xg - mean) / torch.sqrt(var + eps)).reshape(n, c, h, w)
    return out * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


def standardize_formula(w, eps=1e-10):
    """BiT: per output channel, over fan-in, biased variance."""
    flat = w.reshape(w.shape[0], -1)
    mean = flat.mean(1)
    var = ((flat - mean[:, None]) ** 2).mean(1)
    return ((flat - mean[:, None]) / torch.sqrt(var[:, None] + eps)).reshape(w.shape)


def randomize_affine(layer, generator):
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))


@pytest.mark.parametrize(
    "name, kw, groups",
    [
        ("gn", {"groups": 4}, 4),
        ("gn", {"channels_per_group": 2}, 8),
        ("gn", {}, 16),  # default 32 capped to the 16 channels
        ("gn_ws", {"groups": 2}, 2),
        ("ln", {}, 1),
        ("in", {}, 16),
    ],
)
def test_group_norms_equal_the_formula(name, kw, groups):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 5, 7, generator=gen) * 3 + 1
    layer = make_norm(name, 16, **kw)
    randomize_affine(layer, gen)
    expected = group_norm_formula(x, groups, layer.weight, layer.bias)
    assert (layer(x) - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["bn", "bn_ws"])
def test_batch_norm_uses_batch_statistics_in_training(name):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 3, 5, generator=gen) * 2 - 1
    layer = make_norm(name, 6).train()
    randomize_affine(layer, gen)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * layer.weight.view(1, -1, 1, 1)
    expected = expected + layer.bias.view(1, -1, 1, 1)
    assert (layer(x) - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "channels, kw, groups",
    [
        (64, {}, 32),
        (640, {}, 32),
        (16, {}, 16),
        (48, {}, 24),  # largest divisor of 48 that is <= 32
        (64, {"groups": 8}, 8),
        (64, {"channels_per_group": 16}, 4),
    ],
)
def test_gn_group_count(channels, kw, groups):
    layer = make_norm("gn", channels, **kw)
    assert isinstance(layer, nn.GroupNorm)
    assert (layer.num_groups, layer.num_channels) == (groups, channels)


def test_none_is_identity_and_bn_is_batch_norm():
    assert isinstance(make_norm("none", 8), nn.Identity)
    assert isinstance(make_norm("bn", 8), nn.BatchNorm2d)


@pytest.mark.parametrize(
    "name, conv_type",
    [
        ("bn", nn.Conv2d),
        ("gn", nn.Conv2d),
        ("ln", nn.Conv2d),
        ("in", nn.Conv2d),
        ("gn_ws", StdConv2d),
        ("bn_ws", StdConv2d),
        ("none", ScaledStdConv2d),
    ],
)
def test_each_norm_decides_its_conv(name, conv_type):
    conv = conv_for_norm(name)(4, 8, 3, 2, 1)
    assert type(conv) is conv_type
    assert conv.bias is None and conv.stride == (2, 2) and conv.padding == (1, 1)
    norm_layer, conv_layer = layer_factories(name)
    assert type(conv_layer(4, 8, 1)) is conv_type
    assert type(norm_layer(8)) is type(make_norm(name, 8))


def test_every_catalog_norm_builds():
    assert set(catalog.NORMS) == {"bn", "gn", "ln", "in", "gn_ws", "bn_ws", "none"}
    for name in catalog.NORMS:
        make_norm(name, 32)


def test_ws_conv_weight_is_standardized_and_output_matches_plain_conv():
    gen = torch.Generator().manual_seed(2)
    conv = StdConv2d(5, 7, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.3 + 0.2)
    w = conv.effective_weight().reshape(7, -1)
    assert w.mean(1).abs().max().item() < 1e-5
    assert (w.var(1, unbiased=False) - 1).abs().max().item() < 1e-4
    x = torch.randn(2, 5, 9, 9, generator=gen)
    expected = F.conv2d(x, standardize_formula(conv.weight), conv.bias, stride=2, padding=1)
    assert (conv(x) - expected).abs().max().item() < 1e-5


def test_scaled_ws_conv_matches_its_formula():
    gen = torch.Generator().manual_seed(3)
    conv = ScaledStdConv2d(6, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.gain.copy_(torch.rand(conv.gain.shape, generator=gen) + 0.5)
    fan_in = 6 * 3 * 3
    w = conv.weight.reshape(4, -1)
    mean, std = w.mean(1, keepdim=True), w.std(1, unbiased=False, keepdim=True)
    w_hat = (GAMMA_RELU * conv.gain.reshape(4, 1) * (w - mean) / (std * math.sqrt(fan_in))).reshape(
        conv.weight.shape
    )
    assert (conv.effective_weight() - w_hat).abs().max().item() < 1e-6
    x = torch.randn(2, 6, 8, 8, generator=gen)
    assert (conv(x) - F.conv2d(x, w_hat, padding=1)).abs().max().item() < 1e-5


def test_gamma_relu_restores_unit_variance_after_relu():
    assert GAMMA_RELU == 1.7139588594436646  # NF-ResNets' constant
    analytic = math.sqrt(2) / math.sqrt(1 - 1 / math.pi)  # 1.71286, 0.06 % below
    assert abs(GAMMA_RELU / analytic - 1) < 1e-3
    gen = torch.Generator().manual_seed(4)
    conv = ScaledStdConv2d(512, 64, 1, bias=False)  # 1x1: uncorrelated inputs
    z = torch.randn(64, 512, 4, 4, generator=gen)
    with torch.no_grad():
        out = conv(F.relu(z))
    assert out.var().item() == pytest.approx(1.0, rel=0.05)


def test_batch_norm_trains_on_one_image_with_spatial_extent():
    layer = make_norm("bn", 4).train()
    out = layer(torch.randn(1, 4, 3, 3))
    assert torch.isfinite(out).all()


def test_batch_norm_on_one_value_per_channel_says_why():
    layer = make_norm("bn_ws", 4).train()
    assert isinstance(layer, BatchNorm2d)
    with pytest.raises(ValueError, match=r"bn_ws.*batch size 1 at 1x1.*gn"):
        layer(torch.randn(1, 4, 1, 1))
    layer.eval()(torch.randn(1, 4, 1, 1))  # running statistics: fine


def test_unknown_norm_lists_the_norms():
    with pytest.raises(ValueError, match=r"'batchnorm'.*allowed: bn, gn, ln, in, gn_ws, bn_ws"):
        make_norm("batchnorm", 8)
    with pytest.raises(ValueError, match="'gm'"):
        layer_factories("gm")


def test_groups_that_do_not_divide_name_width_and_choices():
    with pytest.raises(ValueError, match=r"groups=3 .* 64 channels.*\[1, 2, 4, 8, 16, 32, 64\]"):
        make_norm("gn", 64, groups=3)
    with pytest.raises(
        ValueError, match=r"channels_per_group=5 .* 16 channels.*\[1, 2, 4, 8, 16\]"
    ):
        make_norm("gn_ws", 16, channels_per_group=5)
    with pytest.raises(ValueError, match="groups=32 .* 16 channels"):
        make_norm("gn", 16, groups=32)  # an explicit G is never capped


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_norm("gn", 8, groups=2, channels_per_group=4), "not both"),
        (lambda: make_norm("bn", 8, groups=2), "'bn' takes no groups"),
        (lambda: make_norm("ln", 8, channels_per_group=2), "'ln' takes no channels_per_group"),
        (lambda: make_norm("gn", 8, groups=0), "groups=0"),
        (lambda: layer_factories("gn", group=2), "unknown norm keyword group"),
    ],
)
def test_bad_norm_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_group_norm_on_one_value_per_group_says_why():
    with pytest.raises(ValueError, match=r"in: group norm with 4 groups.*one value per group"):
        make_norm("in", 4)(torch.randn(2, 4, 1, 1))
    assert make_norm("gn", 4, groups=2)(torch.randn(2, 4, 1, 1)).shape == (2, 4, 1, 1)


# ---------------------------------------------------------------- a norm added by a new user


class RMSGroupNorm(nn.Module):
    """A norm that is not in the project: each group's (C/G, H, W) values divided by their root
    mean square (no mean subtracted), then a per-channel gain and shift."""

    def __init__(self, num_channels: int, num_groups: int, eps: float, norm: str):
        super().__init__()
        self.num_groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(num_channels))  # the gain
        self.bias = nn.Parameter(torch.zeros(num_channels))  # the shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W]
        g = x.reshape(x.shape[0], self.num_groups, -1)  # [N, G, C/G * H * W]
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return g.reshape(x.shape) * self.weight[:, None, None] + self.bias[:, None, None]


RMS = NormSpec(
    "RMS norm over (C, H, W) of each image (a test's own norm)",
    display="RMS",
    groups="one",
    layer=f"{__name__}:RMSGroupNorm",
    conv="torch.nn:Conv2d",
)


@pytest.fixture
def rms(monkeypatch):
    """Registers RMS the way README "Extending" says: one row in norm_registry.NORMS."""
    monkeypatch.setitem(norm_registry.NORMS, "rms", RMS)
    return "rms"


def _exempt_count(run_dir) -> int:
    """How many parameters the run's optimizer held without weight decay (its checkpoint)."""
    groups = torch.load(run_dir / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 5e-4]
    return next(len(g["params"]) for g in groups if g["weight_decay"] == 0.0)


def test_a_norm_added_in_the_registry_trains_exempt_from_decay_and_shows_its_name(
    tmp_path, monkeypatch, rms
):
    model_kw = {"depth": 8, "base_width": 8}
    model = build_model("resnet20", rms, **model_kw)
    gains = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, RMSGroupNorm)}
    # depth 8: stem + 2 per stage over 8 / 16 / 32 channels, projections on 16, 32: 9 layers
    assert len(gains) == 9
    assert gains <= optim.no_decay_names(model)
    assert catalog.allowed_norms("resnet20")[-1] == rms and rms not in catalog.allowed_norms(
        "nf_resnet"
    )

    exempt = {**make_cfg()["optim"], "wd_on_norm": False}
    code, run_dir = run(tmp_path, make_cfg(norm=rms, epochs=1, model_kw=model_kw, optim=exempt))
    assert code == 0 and metrics(run_dir)["status"] == "ok"
    log = (run_dir / "train.log").read_text()
    assert "norm layers (channels/groups): 8ch/G1 x3, 16ch/G1 x3, 32ch/G1 x3" in log
    # Not decayed: the 9 gains and 9 shifts, and the classifier's bias (the convs have none).
    assert _exempt_count(run_dir) == 9 + 9 + 1
    assert norm_label({"norm": rms}) == "RMS"

    # The row decides: with wd_exempt false the gains are decayed, the shifts (biases) are not.
    monkeypatch.setitem(norm_registry.NORMS, rms, dataclasses.replace(RMS, wd_exempt=False))
    assert not gains & optim.no_decay_names(model)
    code, run_dir = run(
        tmp_path, make_cfg(norm=rms, epochs=1, model_kw=model_kw, optim=exempt), "decayed"
    )
    assert code == 0 and _exempt_count(run_dir) == 9 + 1


def test_a_registry_row_that_names_nothing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(
        norm_registry.NORMS, "typo", dataclasses.replace(RMS, layer="normrepro.norms:gruop_norm")
    )
    with pytest.raises(ValueError, match=r"'normrepro.norms:gruop_norm' names nothing"):
        make_norm("typo", 8)
    with pytest.raises(ValueError, match=r"groups='two'.*allowed: none, configurable, one"):
        dataclasses.replace(RMS, groups="two")
    with pytest.raises(ValueError, match=r"layer='group_norm'.*'module:attribute'"):
        dataclasses.replace(RMS, layer="group_norm")
