"""Norm layers and convolutions, built by a norm's name from its row in norm_registry.NORMS.

    name    norm layer                         convolution
    bn      BatchNorm2d                        nn.Conv2d
    gn      GroupNorm(G, C)                    nn.Conv2d
    ln      GroupNorm(1, C)                    nn.Conv2d
    in      GroupNorm(C, C)                    nn.Conv2d
    gn_ws   GroupNorm(G, C)                    StdConv2d (weight standardization, BiT)
    bn_ws   BatchNorm2d                        StdConv2d
    none    nn.Identity                        ScaledStdConv2d (normalizer-free ResNets)

G for gn is set by `groups` or `channels_per_group`, else the largest divisor of C that is
<= 32 (catalog.resolve_groups). Blocks get `layer_factories(name)`: a norm callable
`norm_layer(num_channels)` and a conv callable `conv_layer(in, out, kernel_size, stride=1,
padding=0, bias=False)`; they never look at the name. Every layer make_norm builds carries
`built_norm` (its norm, C and G): the weight-decay exemption (optim.no_decay_names) and
train.log's (C, G) line find the norm layers of a model by it, whatever their class.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import NamedTuple

import torch
from torch import nn

from normrepro import catalog
from normrepro.norm_registry import NORMS, NormSpec

# Var(relu(z)) = (1 - 1/pi) / 2 for z ~ N(0, 1), so a scaled-WS conv after a ReLU needs the gain
# sqrt(2) / sqrt(1 - 1/pi) = 1.71286 to give unit variance again (Brock et al. 2021). NF-ResNets'
# code uses the constant below, measured by sampling; it is 0.06 % above the analytic value and
# is the one the seeds and REFERENCES.md quote.
GAMMA_RELU = 1.7139588594436646


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardization (Qiao et al. 2019) as BiT's StdConv2d.

    Each output channel's weights are standardized over their fan-in (C_in * kH * kW) with the
    biased variance: w_hat = (w - mean) / sqrt(var + eps).
    """

    def __init__(self, *args, eps: float = 1e-10, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def effective_weight(self) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (self.weight - mean) / torch.sqrt(var + self.eps)  # [out, in/groups, kH, kW]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class ScaledStdConv2d(StdConv2d):
    """Scaled weight standardization of NF-ResNets (Brock et al. 2021, arXiv 2101.08692).

    w_hat = gamma * gain * (w - mean) / (std * sqrt(fan_in)), with a learnable per-output-channel
    gain initialised to 1 and gamma fixed by the activation that feeds the conv (GAMMA_RELU after
    a ReLU, 1 on the network's input). On an input whose entries are uncorrelated with variance
    v, each output channel then has variance gamma^2 * v.
    """

    # The gain is a norm-like scale (like BN's gamma), exempt from weight decay by role
    # (optim.no_decay_names) although it is a 4-D tensor.
    no_weight_decay = ("gain",)

    def __init__(self, *args, gamma: float = GAMMA_RELU, eps: float = 1e-10, **kwargs):
        super().__init__(*args, eps=eps, **kwargs)
        self.gamma = gamma
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))
        self.fan_in = self.weight[0].numel()

    def effective_weight(self) -> torch.Tensor:
        scale = self.gain * (self.gamma / math.sqrt(self.fan_in))  # [out, 1, 1, 1]
        return super().effective_weight() * scale


def _one_value_error(norm: str, layer: str, x: torch.Tensor, per: str) -> ValueError:
    n, _, h, w = x.shape
    return ValueError(
        f"{norm}: {layer} got an input of shape {tuple(x.shape)}: one value per {per} (batch size "
        f"{n} at {h}x{w}), so no statistics can be computed; use a norm that pools more values "
        f"(gn or gn_ws with fewer groups, ln), a larger batch (bn) or larger images"
    )


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that says clearly why it cannot train on one value per channel.

    PyTorch fails only when N * H * W == 1 (batch size 1 on a 1x1 map); a batch of one image
    with H * W > 1 trains, its statistics then come from that image alone.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, norm: str = "bn"):
        super().__init__(num_features, eps=eps)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:  # x: [N, C, H, W] with N * H * W == 1
            layer = f"batch norm over {self.num_features} channels in training"
            raise _one_value_error(self.norm, layer, x, "channel")
        return super().forward(x)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that says clearly why it cannot normalize one value per group.

    PyTorch fails (in training and in evaluation) when C / G * H * W == 1: one channel per group
    (in, or gn capped to the channel count) on a 1x1 map.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, norm: str = "gn"):
        super().__init__(num_groups, num_channels, eps=eps)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] == 1 and self.num_groups == self.num_channels:
            layer = f"group norm with {self.num_groups} groups over {self.num_channels} channels"
            raise _one_value_error(self.norm, layer, x, "group")
        return super().forward(x)


# The layer callables the registry's rows name: (num_channels, num_groups, eps, norm) -> layer.
def batch_norm(num_channels: int, num_groups: None, eps: float, norm: str) -> BatchNorm2d:
    return BatchNorm2d(num_channels, eps=eps, norm=norm)


def group_norm(num_channels: int, num_groups: int, eps: float, norm: str) -> GroupNorm:
    return GroupNorm(num_groups, num_channels, eps=eps, norm=norm)


class BuiltNorm(NamedTuple):
    """What make_norm records on every layer it builds, as the attribute `built_norm`."""

    norm: str  # its row in norm_registry.NORMS
    channels: int  # C
    groups: int | None  # G; None for a norm without groups (BatchNorm)


@functools.cache
def resolve(reference: str):
    """The object a registry reference "module:attribute" names; ValueError naming it if none."""
    module, _, attribute = reference.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"norm registry: {reference!r} names nothing importable ({err}); allowed: "
            "'module:attribute' of a callable, e.g. 'normrepro.norms:group_norm'"
        ) from None


def spec_of(module: nn.Module) -> NormSpec | None:
    """The registry row a layer was built from by make_norm, or None (not built by it)."""
    built = getattr(module, "built_norm", None)
    return NORMS.get(built.norm) if isinstance(built, BuiltNorm) else None


def make_norm(
    name: str,
    num_channels: int,
    groups: int | None = None,
    channels_per_group: int | None = None,
    eps: float = 1e-5,
) -> nn.Module:
    """The norm layer `name` over `num_channels` channels (see the module docstring).

    ValueError naming the value and what is allowed for an unknown name, for groups or
    channels_per_group that do not divide num_channels, or for groups given to a norm without
    groups.
    """
    num_groups = catalog.resolve_groups(name, num_channels, groups, channels_per_group)
    spec = NORMS[name]
    if spec.layer is None:
        return nn.Identity()
    layer = resolve(spec.layer)(num_channels, num_groups, eps, name)
    layer.built_norm = BuiltNorm(name, num_channels, num_groups)
    return layer


def conv_for_norm(name: str):
    """The conv that goes with norm `name`: callable(in, out, kernel_size, stride=1, padding=0,
    bias=False, ...) -> nn.Conv2d (plain), StdConv2d (*_ws) or ScaledStdConv2d (none)."""
    catalog.check_norm(name)
    return functools.partial(resolve(NORMS[name].conv), bias=False)


def layer_factories(name: str, **norm_kw):
    """(norm_layer(num_channels) -> nn.Module, conv_layer(...) -> nn.Conv2d) for norm `name`.

    norm_kw: groups or channels_per_group (gn, gn_ws); anything else is a ValueError.
    """
    catalog.check_norm(name)
    unknown = sorted(set(norm_kw) - set(catalog.NORM_KW) - {"eps"})
    if unknown:
        raise ValueError(
            f"unknown norm keyword {', '.join(unknown)}; allowed: {', '.join(catalog.NORM_KW)}, eps"
        )
    return functools.partial(make_norm, name, **norm_kw), conv_for_norm(name)


def norm_layer_groups(model: nn.Module) -> list[tuple[str, int, int | None]]:
    """(module name, channels C, groups G) of every norm layer (built by make_norm) of a built
    model, in order.

    G is None for a norm without groups (BatchNorm). C == G means InstanceNorm on that layer and
    G == 1 LayerNorm, whatever the norm was called: the trainer logs this list so that a "gn"
    which is IN on some layers is visible in every run's train.log.
    """
    out = []
    for name, module in model.named_modules():
        built = getattr(module, "built_norm", None)
        if isinstance(built, BuiltNorm):
            out.append((name, built.channels, built.groups))
    return out


def format_norm_layer_groups(layers: list[tuple[str, int, int | None]]) -> str:
    """`16ch/G8 x7, 32ch/G8 x7, 64ch/G8 x7` (distinct (C, G) with their layer counts)."""
    counts: dict[tuple[int, int | None], int] = {}
    for _, c, g in layers:
        counts[(c, g)] = counts.get((c, g), 0) + 1
    parts = [f"{c}ch/G{'-' if g is None else g} x{n}" for (c, g), n in counts.items()]
    return ", ".join(parts) or "no norm layers"


# Every row's references resolve (a typo fails on import, not inside a training job).
for _spec in NORMS.values():
    for _reference in (_spec.layer, _spec.conv):
        if _reference is not None:
            resolve(_reference)

__all__ = [
    "GAMMA_RELU",
    "BatchNorm2d",
    "BuiltNorm",
    "GroupNorm",
    "ScaledStdConv2d",
    "StdConv2d",
    "batch_norm",
    "conv_for_norm",
    "format_norm_layer_groups",
    "group_norm",
    "layer_factories",
    "make_norm",
    "norm_layer_groups",
    "resolve",
    "spec_of",
]
