"""The norm registry: every norm the project knows, one row each in NORMS. Adding a row is all it
takes to add a norm (README "Extending").

Pure Python, no torch: Snakemake reads it at parse time (through catalog.py) to check a grid's
norms before any job starts. Everything else about a norm is read from its row:

    key          the config value (`norm: gn`); the order is the order error messages list them
    description  one line, for error messages and the docs
    display      the report's label in tables and legends ("GN+WS")
    groups       how the layer groups its channels, which decides its (C, G) in train.log and the
                 keywords it takes (catalog.resolve_groups):
                   "none"          no groups (batch statistics per channel); logged as G-
                   "configurable"  `groups` or `channels_per_group`, by default the largest
                                   divisor of C up to 32
                   "one"           G = 1 (statistics over all of C, H, W of an image)
                   "per_channel"   G = C (statistics over H, W of each channel of an image)
    layer        "module:attribute" of a callable (num_channels, num_groups, eps, norm) ->
                 nn.Module that builds one norm layer (num_groups None for groups "none");
                 None: no norm layer (nn.Identity), for the normalizer-free nets
    conv         "module:attribute" of the conv class that goes with the norm; it is called as
                 conv(in, out, kernel_size, stride=1, padding=0, bias=False)
    wd_exempt    whether `optim.wd_on_norm: false` exempts the layer's parameters (its gain and
                 shift) from weight decay (optim.no_decay_names); False: they are decayed like
                 a conv's weights (a parameter named `bias`, like every bias, still is not)

The references are strings so that this table stays torch-free; norms.py resolves them (and
checks every row resolves when it is imported) and tags each layer it builds with its norm.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUPINGS = ("none", "configurable", "one", "per_channel")


@dataclass(frozen=True)
class NormSpec:
    """One norm (see the module docstring for each field)."""

    description: str
    display: str
    groups: str
    layer: str | None
    conv: str
    wd_exempt: bool = True

    def __post_init__(self):
        if self.groups not in GROUPINGS:
            raise ValueError(
                f"NormSpec groups={self.groups!r} is not allowed; allowed: {', '.join(GROUPINGS)}"
            )
        if self.layer is not None:
            _check_reference("layer", self.layer)
        _check_reference("conv", self.conv)


def _check_reference(key: str, ref: object) -> None:
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ValueError(
            f"NormSpec {key}={ref!r} is not allowed; allowed: 'module:attribute' "
            "(e.g. 'normrepro.norms:group_norm')"
        )


NORMS: dict[str, NormSpec] = {
    "bn": NormSpec(
        "BatchNorm: per-channel statistics over (N, H, W) of the batch",
        display="BN",
        groups="none",
        layer="normrepro.norms:batch_norm",
        conv="torch.nn:Conv2d",
    ),
    "gn": NormSpec(
        "GroupNorm: per-image statistics over groups of channels and (H, W)",
        display="GN",
        groups="configurable",
        layer="normrepro.norms:group_norm",
        conv="torch.nn:Conv2d",
    ),
    "ln": NormSpec(
        "LayerNorm as GroupNorm with one group: per-image statistics over (C, H, W)",
        display="LN",
        groups="one",
        layer="normrepro.norms:group_norm",
        conv="torch.nn:Conv2d",
    ),
    "in": NormSpec(
        "InstanceNorm as GroupNorm with one channel per group (affine)",
        display="IN",
        groups="per_channel",
        layer="normrepro.norms:group_norm",
        conv="torch.nn:Conv2d",
    ),
    "gn_ws": NormSpec(
        "GroupNorm with weight-standardized convolutions (BiT)",
        display="GN+WS",
        groups="configurable",
        layer="normrepro.norms:group_norm",
        conv="normrepro.norms:StdConv2d",
    ),
    "bn_ws": NormSpec(
        "BatchNorm with weight-standardized convolutions",
        display="BN+WS",
        groups="none",
        layer="normrepro.norms:batch_norm",
        conv="normrepro.norms:StdConv2d",
    ),
    "none": NormSpec(
        "no norm layer, scaled weight-standardized convolutions (normalizer-free nets)",
        display="no norm",
        groups="none",
        layer=None,
        conv="normrepro.norms:ScaledStdConv2d",
    ),
}


def display_name(norm: object) -> str:
    """The report's label of `norm`; an unknown value (an old results table) as it is."""
    spec = NORMS.get(norm) if isinstance(norm, str) else None
    return spec.display if spec else str(norm)
