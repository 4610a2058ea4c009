"""Model zoo: published parameter counts, every model x every norm on a tiny input, the norm
widths the catalog predicts, NF-ResNet signal propagation, and the errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normrepro import catalog
from normrepro.models import build_model
from normrepro.models.nf_resnet import NFBlock
from normrepro.norms import ScaledStdConv2d, StdConv2d

torch.set_num_threads(1)

# A smoke-sized variant of every family: (name, overrides, input size). The ImageNet stem
# divides by 32, so those nets get 64x64 images to keep every map larger than 1x1.
SMALL = {
    "resnet": ("resnet20", {"depth": 8, "base_width": 4}, 16),
    "bottleneck_resnet": ("resnet164", {"depth": 11, "base_width": 4}, 16),
    "preact_resnet": ("preact_resnet164", {"depth": 11, "base_width": 4}, 16),
    "wrn": ("wrn10_1", {"base_width": 4}, 16),
    "nf_resnet": ("nf_resnet", {"blocks_per_stack": 1, "base_width": 4}, 16),
    "imagenet_basic": ("resnet34", {"base_width": 4}, 64),
    "imagenet_bottleneck": ("resnet50", {"base_width": 4}, 64),
}
CASES = [
    pytest.param(name, norm, kw, size, id=f"{name}-{norm}")
    for name, kw, size in SMALL.values()
    for norm in catalog.allowed_norms(name)
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name, norm, **kw):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return build_model(name, norm, **kw)


def norm_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]


def test_small_variants_cover_every_family():
    assert {catalog.check_model(name) for name, _, _ in SMALL.values()} == set(catalog.FAMILIES)


@pytest.mark.parametrize(
    "name, norm, published",
    [
        ("resnet20", "bn", 0.27e6),  # He et al. 2015 (0.27M)
        ("resnet164", "bn", 1.7e6),  # He et al. 2016 (1.7M)
        ("preact_resnet164", "bn", 1.7e6),
        ("wrn28_10", "bn", 36.5e6),  # Zagoruyko & Komodakis 2016 (36.5M)
        ("wrn28_10", "gn_ws", 36.5e6),  # GN has as many parameters as BN; WS adds none
    ],
)
def test_parameter_counts_match_the_papers(name, norm, published):
    assert n_params(build_on_meta(name, norm)) == pytest.approx(published, rel=0.02)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_imagenet_resnets_have_torchvision_parameter_counts(name):
    import torchvision

    with torch.device("meta"):
        reference = getattr(torchvision.models, name)()
    assert n_params(build_on_meta(name, "bn", num_classes=1000)) == n_params(reference)


@pytest.mark.parametrize("name, norm, kw, size", CASES)
@pytest.mark.parametrize("batch_size", [1, 2])
def test_every_model_and_norm_trains_a_step(name, norm, kw, size, batch_size):
    torch.manual_seed(0)
    model = build_model(name, norm, num_classes=7, **kw).train()
    x, y = torch.randn(batch_size, 3, size, size), torch.randint(0, 7, (batch_size,))
    logits = model(x)
    assert logits.shape == (batch_size, 7)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).step()
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (batch_size, 7) and torch.isfinite(out).all()


def test_one_channel_input():
    out = build_model("resnet20", "gn", in_channels=1, depth=8, base_width=4)(
        torch.randn(2, 1, 28, 28)
    )
    assert out.shape == (2, 10)


@pytest.mark.parametrize(
    "name, kw",
    [(name, {}) for name in catalog.model_names()]
    + [(name, kw) for name, kw, _ in SMALL.values()]
    + [("wrn16_8", {"base_width": 8}), ("resnet50", {"base_width": 16, "stem": "cifar"})],
)
def test_catalog_norm_widths_match_the_built_model(name, kw):
    norm = catalog.allowed_norms(name)[0]
    built = {m.weight.shape[0] for m in norm_layers(build_on_meta(name, norm, **kw))}
    assert sorted(built) == catalog.norm_widths(name, **kw)


def test_groups_reach_every_norm_layer():
    layers = norm_layers(build_on_meta("resnet20", "gn", groups=8))
    assert layers and all(m.num_groups == 8 for m in layers)
    layers = norm_layers(build_on_meta("wrn16_4", "gn_ws", channels_per_group=4))
    assert layers and all(m.num_groups * 4 == m.num_channels for m in layers)
    layers = norm_layers(build_on_meta("wrn28_10", "gn_ws"))  # 32 capped: 16 at the stem
    assert {(m.num_channels, m.num_groups) for m in layers} == {
        (16, 16),
        (160, 32),
        (320, 32),
        (640, 32),
    }


@pytest.mark.parametrize(
    "name, norm, conv_type",
    [
        ("resnet20", "bn", nn.Conv2d),
        ("preact_resnet164", "gn", nn.Conv2d),
        ("wrn16_4", "gn_ws", StdConv2d),
        ("resnet50", "bn_ws", StdConv2d),
        ("nf_resnet", "none", ScaledStdConv2d),
    ],
)
def test_the_norm_decides_every_conv(name, norm, conv_type):
    model = build_on_meta(name, norm)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is conv_type for m in convs)
    assert all(m.bias is None for m in convs) or conv_type is ScaledStdConv2d


def test_overrides_change_the_size():
    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())

    assert count(build_on_meta("resnet20", "bn", depth=8), nn.Conv2d) == 7 + 2  # + 2 shortcuts
    wrn = build_on_meta("wrn28_10", "bn", depth=10, width=2, dropout=0.1)
    assert {m.p for m in wrn.modules() if isinstance(m, nn.Dropout)} == {0.1}
    assert {
        m.p for m in build_on_meta("wrn28_10", "bn").modules() if isinstance(m, nn.Dropout)
    } == {0.3}
    assert count(build_on_meta("nf_resnet", "none", blocks_per_stack=2), NFBlock) == 6
    assert count(build_on_meta("nf_resnet", "none"), NFBlock) == 15  # 3 stacks of 5 (seed 002)


def test_bn_fails_clearly_only_where_pytorch_cannot_compute_statistics():
    x = torch.randn(1, 3, 32, 32)  # the ImageNet stem leaves 1x1 maps in the last stage
    with pytest.raises(ValueError, match=r"bn: .*batch size 1 at 1x1.*gn"):
        build_model("resnet34", "bn", base_width=4).train()(x)
    # as PyTorch's GroupNorm, in (one channel per group) fails on 1x1 maps at any batch size
    with pytest.raises(ValueError, match=r"in: group norm with 32 groups.*one value per group"):
        build_model("resnet34", "in", base_width=4).eval()(torch.randn(4, 3, 32, 32))
    assert build_model("resnet34", "gn", base_width=4, groups=2).train()(x).shape == (1, 10)
    assert build_model("resnet34", "bn", base_width=4, stem="cifar").train()(x).shape == (1, 10)
    assert build_model("resnet34", "bn", base_width=4).eval()(x).shape == (1, 10)


def block_input_variances(model, x):
    """(measured variance, predicted beta^2) of the input of every NF block."""
    seen = []
    hooks = [
        block.register_forward_pre_hook(
            lambda block, args: seen.append((args[0].var().item(), block.beta**2))
        )
        for block in model.modules()
        if isinstance(block, NFBlock)
    ]
    with torch.no_grad():
        features = F.relu(model.stages(model.stem(x)))
    for hook in hooks:
        hook.remove()
    return seen, features


def test_nf_resnet_signal_propagation_at_init():
    # Zero padding lowers the variance at a map's border, so the image is large enough that
    # borders are a small share even at the last stack's 1/4 resolution.
    torch.manual_seed(0)
    model = build_model("nf_resnet", "none")
    seen, _ = block_input_variances(model, torch.randn(2, 3, 128, 128))
    alpha2 = 0.2**2  # predicted: 1, then + alpha^2 a block, back to 1 + alpha^2 after a transition
    expected = [1.0] + [1.0 + alpha2 * (i + 1) for i in range(5)] * 3
    assert [beta2 for _, beta2 in seen] == pytest.approx(expected[:15])
    for i, (measured, beta2) in enumerate(seen):
        assert measured == pytest.approx(beta2, rel=0.10), f"block {i}"


def test_nf_resnet_output_does_not_explode_with_depth():
    for blocks in (1, 4, 16):
        torch.manual_seed(0)
        model = build_model("nf_resnet", "none", blocks_per_stack=blocks, base_width=16)
        seen, _ = block_input_variances(model, torch.randn(2, 3, 64, 64))
        last_block_in = seen[-1][0]
        predicted = 1 + blocks * 0.2**2  # variance after the last block, not its input
        assert 0.7 < last_block_in / seen[-1][1] < 1.3
        assert last_block_in < predicted  # linear growth, bounded by the recurrence


def test_nf_resnet_zero_init_last_starts_every_block_as_its_shortcut():
    torch.manual_seed(0)
    model = build_model("nf_resnet", "none", blocks_per_stack=2, base_width=4, zero_init_last=True)
    block = model.stages[0][1]  # not a transition: identity shortcut
    h = torch.randn(2, block.out_channels, 8, 8)
    assert torch.equal(block(h), h)
    assert all(b.conv4.gain.abs().sum() == 0 for b in model.modules() if isinstance(b, NFBlock))
    assert build_model("nf_resnet", "none", blocks_per_stack=1).stages[0][0].conv4.gain.min() == 1


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_model("resnet21", "bn"), r"'resnet21'.*allowed: .*resnet\{6n\+2\}"),
        (lambda: build_model("vgg16", "bn"), "'vgg16'.*wrn28_10"),
        (lambda: build_model("resnet20", "batch"), "'batch'.*allowed: bn, gn"),
        (lambda: build_model("resnet20", "none"), "'none' is not available for resnet20"),
        (lambda: build_model("nf_resnet", "bn"), "'bn' is not available for nf_resnet.*none"),
        (lambda: build_model("resnet20", "bn", width=2), "'width'.*allowed: depth, base_width"),
        (lambda: build_model("wrn28_10", "bn", depth=27), "depth=27 .* 6n\\+4"),
        (lambda: build_model("resnet164", "bn", depth=21), "depth=21 .* 9n\\+2"),
        (lambda: build_model("nf_resnet", "none", alpha=0), "alpha=0"),
        (lambda: build_model("resnet50", "bn", stem="deep"), "stem='deep'.*imagenet"),
        (
            lambda: build_model("resnet20", "gn", groups=32),
            r"groups=32 .* norm width 16 .* \[1, 2, 4, 8, 16\]",
        ),
        (lambda: build_model("wrn28_10", "gn_ws", channels_per_group=3), "channels_per_group=3"),
        (lambda: build_model("resnet20", "bn", groups=4), "'bn' takes no groups"),
    ],
)
def test_bad_names_and_overrides_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_catalog_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, catalog; assert 'torch' not in sys.modules; catalog.norm_widths('wrn28_10')"
    subprocess.run([sys.executable, "-c", code], cwd=catalog.__file__.rsplit("/", 1)[0], check=True)
