"""Pieces every model family shares: stages of blocks, the classifier head, the initialisation."""

from __future__ import annotations

from torch import nn


def make_stages(block, in_channels: int, widths, num_blocks, **block_kw):
    """(nn.Sequential of stages, output channels): stage s has num_blocks[s] blocks of width
    widths[s]; the first block of every stage but the first strides 2 (halves the map).

    `block(in_channels, width, stride, **block_kw)` must set `out_channels`.
    """
    stages = []
    for s, (width, n) in enumerate(zip(widths, num_blocks, strict=True)):
        blocks = []
        for i in range(n):
            stride = 2 if s > 0 and i == 0 else 1
            blocks.append(block(in_channels, width, stride, **block_kw))
            in_channels = blocks[-1].out_channels
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), in_channels


def needs_projection(in_channels: int, out_channels: int, stride: int) -> bool:
    """Whether a shortcut must be a 1x1 conv because the block changes the shape."""
    return stride != 1 or in_channels != out_channels


class ClassifierHead(nn.Sequential):
    """Global average pool and a linear layer: [N, C, H, W] -> [N, num_classes]."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(in_channels, num_classes)
        )


def init_weights(model: nn.Module) -> None:
    """He (Kaiming normal, fan-out, ReLU) convs with zero biases; norm layers at gamma 1, beta 0.

    Linear layers keep PyTorch's default. Weight-standardized convs only use the direction of
    their weights, so this init is harmless there too.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
