"""Names of the norms and models, their overrides, and the channel widths their norm layers see.

Pure Python, no torch: Snakemake imports this at parse time to reject a bad grid before any job
starts. `models.build_model` and `norms.make_norm` take their rules from here, so a name, an
override, a default or a group count is checked in one place. The norms themselves are the rows
of norm_registry.NORMS.

Model names (a family is one architecture; its overrides change the size, not the kind):

    resnet{6n+2}       CIFAR ResNet of He et al. 2015 (basic blocks, post-activation, 1x1
                       projection shortcuts where the shape changes): resnet20, resnet56, ...
    resnet164          CIFAR bottleneck ResNet, post-activation, depth 9n+2 (He et al. 2016)
    preact_resnet164   the same with pre-activation blocks (He et al. 2016, Identity Mappings)
    wrn{6n+4}_{k}      pre-activation wide ResNet of Zagoruyko & Komodakis: wrn28_10, wrn16_8, ...
    nf_resnet          normalizer-free ResNet of seed 002 (Brock et al. 2021), norm 'none' only
    resnet18 ... 152   ImageNet ResNets (torchvision's layout, v1.5 bottlenecks)

resnet50 and resnet152 are the ImageNet nets although 50 and 152 are also 6n+2; resnet164 is the
bottleneck net although 164 is also 6n+2. A CIFAR basic ResNet of such a depth is
`resnet20` with the override `depth=50`.
"""

from __future__ import annotations

import difflib
import re

from normrepro.norm_registry import NORMS

# gn's number of groups when neither groups nor channels_per_group is given (Wu & He use 32):
# the largest divisor of the layer's channel count that is <= 32, i.e. 32 for a multiple of 32
# and C itself (one channel per group) for a narrower layer such as ResNet-20's 16 channels.
DEFAULT_GROUPS = 32
NORM_KW = ("groups", "channels_per_group")  # build_model keywords that go to the norm

# ImageNet ResNets: depth -> (block, blocks per stage), as torchvision builds them.
IMAGENET_RESNETS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STEMS = ("imagenet", "cifar")  # 7x7/2 conv + 3x3/2 max-pool, or one 3x3/1 conv

# family -> its overrides and their defaults (None: taken from the model's name).
# depth       total weighted layers; resnet 6n+2, bottleneck nets 9n+2, wrn 6n+4
# base_width  channels of the stem and of the first stage's 3x3 convs; each stage doubles it
#             (bottleneck nets output 4x that; wrn multiplies the stages, not the stem, by width)
# width       wrn widening factor k
# dropout     wrn dropout probability between the two 3x3 convs of a block
# blocks_per_stack  nf_resnet blocks in each of its 3 stacks
# alpha       nf_resnet residual branch scale
# zero_init_last  nf_resnet: gain of each branch's last conv starts at 0 (SkipInit)
# stem        ImageNet ResNets: 'imagenet' (7x7/2 + max-pool) or 'cifar' (3x3/1, small images)
FAMILIES: dict[str, dict[str, object]] = {
    "resnet": {"depth": None, "base_width": 16},
    "bottleneck_resnet": {"depth": 164, "base_width": 16},
    "preact_resnet": {"depth": 164, "base_width": 16},
    "wrn": {"depth": None, "width": None, "base_width": 16, "dropout": 0.3},
    "nf_resnet": {"blocks_per_stack": 5, "base_width": 32, "alpha": 0.2, "zero_init_last": False},
    "imagenet_resnet": {"depth": None, "base_width": 64, "stem": "imagenet"},
}
FIXED_NAMES = {  # names that are not a parametric pattern
    "resnet164": "bottleneck_resnet",
    "preact_resnet164": "preact_resnet",
    "nf_resnet": "nf_resnet",
    **{f"resnet{d}": "imagenet_resnet" for d in IMAGENET_RESNETS},
}
_PATTERNS = {  # family -> regex of its parametric names
    "resnet": re.compile(r"resnet(\d+)"),
    "wrn": re.compile(r"wrn(\d+)_(\d+)"),
}
PATTERN_HELP = ["resnet{6n+2} (resnet20, resnet32, resnet56, ...)", "wrn{6n+4}_{k} (wrn28_10, ...)"]
DEPTH_RULES = {
    "resnet": (6, 2),
    "bottleneck_resnet": (9, 2),
    "preact_resnet": (9, 2),
    "wrn": (6, 4),
}


def model_names() -> list[str]:
    """Canonical model names; the resnet{6n+2} and wrn{d}_{k} patterns accept more."""
    cifar = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    return (
        cifar
        + ["resnet164", "preact_resnet164", "wrn28_10", "nf_resnet"]
        + [f"resnet{d}" for d in IMAGENET_RESNETS]
    )


def _unknown(kind: str, value: object, names: list[str], allowed: list[str] | None = None):
    """ValueError for an unknown `kind` named `value`: the closest of `names`, and `allowed`."""
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown {kind} {value!r}{hint}; allowed: {', '.join(allowed or names)}")


def _name_defaults(name: object) -> tuple[str, dict[str, object]]:
    """(family, overrides the name fixes) of a model name; ValueError if it is not one."""
    if isinstance(name, str):
        if name in FIXED_NAMES:
            family = FIXED_NAMES[name]
            depth = int(name[len("resnet") :]) if family == "imagenet_resnet" else None
            return family, ({"depth": depth} if depth else {})
        match = _PATTERNS["resnet"].fullmatch(name)
        if match and _depth_ok("resnet", int(match[1])):
            return "resnet", {"depth": int(match[1])}
        match = _PATTERNS["wrn"].fullmatch(name)
        if match and _depth_ok("wrn", int(match[1])) and int(match[2]) >= 1:
            return "wrn", {"depth": int(match[1]), "width": int(match[2])}
    raise _unknown("model", name, model_names(), list(FIXED_NAMES) + PATTERN_HELP)


def _depth_ok(family: str, depth: int) -> bool:
    step, offset = DEPTH_RULES[family]
    return depth >= step + offset and (depth - offset) % step == 0


def check_model(name: str) -> str:
    """The family of model `name`; ValueError naming it and listing the allowed names."""
    return _name_defaults(name)[0]


def check_norm(name: str) -> str:
    """`name` if it is a known norm; ValueError naming it and listing the norms."""
    if name not in NORMS:
        raise _unknown("norm", name, list(NORMS))
    return name


def allowed_norms(model: str) -> list[str]:
    """Norms model `model` can be built with: those without a norm layer ('none') for nf_resnet
    only, those with one for every other model."""
    layerless = check_model(model) == "nf_resnet"
    return [name for name, spec in NORMS.items() if (spec.layer is None) == layerless]


def takes_groups(norm: str) -> bool:
    """Whether `norm` takes the `groups` / `channels_per_group` keywords (gn, gn_ws)."""
    return NORMS[check_norm(norm)].groups == "configurable"


def is_group_norm(norm: object) -> bool:
    """Whether `norm`'s layers normalize over groups of channels (gn, gn_ws, ln, in); False for
    a norm without groups and for a name that is not a norm (an old results table)."""
    spec = NORMS.get(norm) if isinstance(norm, str) else None
    return spec is not None and spec.groups != "none"


def _is_int(value: object, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_value(model: str, family: str, key: str, value: object) -> None:
    """ValueError naming model, key and value when an override value is not allowed."""
    if key == "depth" and family == "imagenet_resnet":
        ok, allowed = value in IMAGENET_RESNETS, f"one of {list(IMAGENET_RESNETS)}"
    elif key == "depth":
        step, offset = DEPTH_RULES[family]
        ok = _is_int(value) and _depth_ok(family, value)
        examples = ", ".join(str(step * n + offset) for n in (1, 2, 3, 18))
        allowed = f"an int {step}n+{offset} with n >= 1 (e.g. {examples})"
    elif key in ("base_width", "width", "blocks_per_stack"):
        ok, allowed = _is_int(value), "an int >= 1"
    elif key == "dropout":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
        allowed = "a number in [0, 1)"
    elif key == "alpha":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        allowed = "a number > 0"
    elif key == "zero_init_last":
        ok, allowed = isinstance(value, bool), "true or false"
    else:  # stem
        ok, allowed = value in STEMS, f"one of {list(STEMS)}"
    if not ok:
        raise ValueError(
            f"{model}: override {key}={value!r} is not allowed; {key} must be {allowed}"
        )


def resolve_model(name: str, overrides: dict | None = None) -> tuple[str, dict[str, object]]:
    """(family, complete keyword arguments of the family's builder) for `name` and `overrides`.

    An override that the family does not have, or a value it does not allow, is a ValueError
    naming it and listing what is allowed. Overrides win over what the name says
    (resnet20 with depth=8 is a ResNet-8). The norm keywords (NORM_KW) are passed over: they
    belong to the norm, see `check_groups`.
    """
    family, from_name = _name_defaults(name)
    allowed = FAMILIES[family]
    overrides = {k: v for k, v in (overrides or {}).items() if k not in NORM_KW}
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        err = _unknown("override", ", ".join(unknown), list(allowed) + list(NORM_KW))
        raise ValueError(f"{name}: {err}")
    kwargs = {**allowed, **from_name, **overrides}
    for key, value in kwargs.items():
        _check_value(name, family, key, value)
    return family, kwargs


def norm_widths(model: str, **overrides) -> list[int]:
    """Sorted distinct channel counts that the norm layers of `model` see (none for nf_resnet).

    Mirrors the builders in src/models/ (a test builds every model and compares).
    """
    family, kw = resolve_model(model, overrides)
    b = kw.get("base_width")
    if family == "resnet":  # stem b, stages b, 2b, 4b
        widths = [b, 2 * b, 4 * b]
    elif family in ("bottleneck_resnet", "preact_resnet"):  # stem b, 3x3 b..4b, outputs 4b..16b
        widths = [b, 2 * b, 4 * b, 8 * b, 16 * b]
    elif family == "wrn":  # stem b (first block's pre-activation), stages k*b, 2kb, 4kb
        widths = [b] + [kw["width"] * b * 2**s for s in range(3)]
    elif family == "imagenet_resnet":  # stem b, stages b..8b, bottleneck outputs 4b..32b
        block, _ = IMAGENET_RESNETS[kw["depth"]]
        widths = [b * 2**s for s in range(4)]
        widths += [4 * w for w in widths] if block == "bottleneck" else []
    else:  # nf_resnet
        widths = []
    return sorted(set(widths))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_groups(
    norm: str, num_channels: int, groups: int | None = None, channels_per_group: int | None = None
) -> int | None:
    """Number of groups a `norm` layer over `num_channels` channels normalizes in.

    By the norm's `groups` in norm_registry.NORMS: "configurable" (gn, gn_ws): `groups` (must
    divide the channels), or channels / `channels_per_group`, or by default the largest divisor
    of the channels that is <= 32; "one" (ln): 1; "per_channel" (in): the channel count; "none"
    (bn, bn_ws, none): None. Giving groups to a norm that does not take them is an error.
    """
    grouping = NORMS[check_norm(norm)].groups
    if groups is not None and channels_per_group is not None:
        raise ValueError(
            f"{norm}: give groups or channels_per_group, not both "
            f"(got groups={groups!r}, channels_per_group={channels_per_group!r})"
        )
    if grouping != "configurable":
        if groups is not None or channels_per_group is not None:
            given = "groups" if groups is not None else "channels_per_group"
            takers = " and ".join(n for n in NORMS if NORMS[n].groups == "configurable")
            raise ValueError(
                f"norm {norm!r} takes no {given} (got {given}="
                f"{groups if groups is not None else channels_per_group!r}); only {takers} do"
            )
        return {"one": 1, "per_channel": num_channels}.get(grouping)
    for key, value in (("groups", groups), ("channels_per_group", channels_per_group)):
        if value is not None and not _is_int(value):
            raise ValueError(f"{norm}: {key}={value!r} is not allowed; it must be an int >= 1")
        if value is not None and num_channels % value:
            valid = _divisors(num_channels)
            raise ValueError(
                f"{norm}: {key}={value} does not divide a norm layer of {num_channels} channels; "
                f"for {num_channels} channels {key} must be one of {valid}"
            )
    if groups is not None:
        return groups
    if channels_per_group is not None:
        return num_channels // channels_per_group
    return max(d for d in _divisors(num_channels) if d <= DEFAULT_GROUPS)


def check_groups(model: str, norm: str, overrides: dict | None, norm_kw: dict | None) -> None:
    """ValueError, before anything is built, if norm_kw does not fit every norm width of model.

    The message names the width that is not divisible and the values that divide every width.
    """
    norm_kw = dict(norm_kw or {})
    unknown = sorted(set(norm_kw) - set(NORM_KW))
    if unknown:
        raise ValueError(f"unknown norm_kw {', '.join(unknown)}; allowed: {', '.join(NORM_KW)}")
    check_norm(norm)
    if norm not in allowed_norms(model):
        raise ValueError(
            f"norm {norm!r} is not available for {model}; allowed: {', '.join(allowed_norms(model))}"
        )
    widths = norm_widths(model, **(overrides or {}))
    for width in widths or [1]:  # nf_resnet has no norm widths; still reject groups for 'none'
        for key, value in norm_kw.items():
            if takes_groups(norm) and _is_int(value) and width % value:
                common = [d for d in _divisors(widths[0]) if all(w % d == 0 for w in widths)]
                raise ValueError(
                    f"{model} with {norm}: {key}={value} does not divide the norm width {width} "
                    f"(its norm widths are {widths}); {key} must be one of {common}"
                )
        resolve_groups(norm, width, **norm_kw)


def norm_groups(model: str, norm: str, overrides: dict | None, norm_kw: dict | None) -> dict:
    """{channels: groups} for every norm width of `model` with `norm` (empty for a norm without
    groups: bn, none).

    Written into each run config by normrepro.grid so that what a "gn" run really normalized is
    on record: one channel per group (C == G) is InstanceNorm on that layer, G == 1 LayerNorm.
    """
    if not is_group_norm(check_norm(norm)):
        return {}
    widths = norm_widths(model, **(overrides or {}))
    return {str(w): resolve_groups(norm, w, **(norm_kw or {})) for w in widths}
