"""The model zoo: `build_model(name, norm, ...)` builds any model of catalog.py with any norm.

from normrepro.models import build_model
model = build_model("resnet20", "gn", groups=8)
model = build_model("wrn28_10", "gn_ws")          # GN (32 groups, capped) + WS convs
model = build_model("nf_resnet", "none", blocks_per_stack=1, base_width=8)   # a smoke-sized NF-ResNet
"""

from __future__ import annotations

from torch import nn

from normrepro import catalog
from normrepro.norms import layer_factories

from .nf_resnet import nf_resnet
from .preact_resnet import preact_resnet, wide_resnet
from .resnet import bottleneck_resnet, cifar_resnet, imagenet_resnet

# catalog family -> builder(**resolved overrides, conv_layer, norm_layer, num_classes, in_channels)
BUILDERS = {
    "resnet": cifar_resnet,
    "bottleneck_resnet": bottleneck_resnet,
    "preact_resnet": preact_resnet,
    "wrn": wide_resnet,
    "nf_resnet": nf_resnet,
    "imagenet_resnet": imagenet_resnet,
}
assert set(BUILDERS) == set(catalog.FAMILIES), "models.BUILDERS and catalog.FAMILIES disagree"


def build_model(
    name: str, norm: str, num_classes: int = 10, in_channels: int = 3, **overrides
) -> nn.Module:
    """Model `name` (catalog.model_names(), resnet{6n+2}, wrn{6n+4}_{k}) with norm `norm`.

    Overrides (defaults in catalog.FAMILIES; an unknown one, or a value out of range, is a
    ValueError naming it and listing the allowed ones):
      resnet{6n+2}         depth (6n+2), base_width (16)
      resnet164            depth (9n+2, 164), base_width (16)
      preact_resnet164     depth (9n+2, 164), base_width (16)
      wrn{d}_{k}           depth (6n+4), width (k), base_width (16), dropout (0.3)
      nf_resnet            blocks_per_stack (5), base_width (32), alpha (0.2),
                           zero_init_last (False)
      resnet18 ... 152     depth (18, 34, 50, 101, 152), base_width (64),
                           stem ('imagenet' or 'cifar')
      every model          groups or channels_per_group: passed to the gn / gn_ws layers;
                           each must divide every norm width (catalog.norm_widths)
    base_width is the stem's channels and the first stage's 3x3 width; smoke runs shrink it
    (e.g. resnet20 depth=8 base_width=4, wrn10_1, nf_resnet blocks_per_stack=1 base_width=8,
    resnet50 base_width=4 stem='cifar').
    """
    norm_kw = {k: overrides.pop(k) for k in catalog.NORM_KW if k in overrides}
    family, kwargs = catalog.resolve_model(name, overrides)
    catalog.check_groups(name, norm, overrides, norm_kw)
    norm_layer, conv_layer = layer_factories(norm, **norm_kw)
    return BUILDERS[family](
        **kwargs,
        conv_layer=conv_layer,
        norm_layer=norm_layer,
        num_classes=num_classes,
        in_channels=in_channels,
    )


__all__ = ["BUILDERS", "build_model"]
