"""Post-activation ResNets (He et al. 2015): conv-norm-ReLU blocks, ReLU after the addition.

Three builders share the blocks and the network:
- `cifar_resnet`: resnet{6n+2} of He et al. 2015 section 4.2: a 3x3 stem, 3 stages of n basic
  blocks at base_width x (1, 2, 4) channels on 32x32, 16x16, 8x8 maps. Where the shape changes
  the shortcut is a 1x1 conv + norm (projection, seed 001's choice; the paper used zero padding).
- `bottleneck_resnet`: resnet164, depth 9n+2, bottleneck blocks (1x1, 3x3, 1x1, expansion 4),
  the post-activation net of He et al. 2016's Table 2 (first row of seed 000's Table 2).
- `imagenet_resnet`: resnet18 ... resnet152 with torchvision's layout (7x7/2 stem + 3x3/2
  max-pool, 4 stages, stride on the bottleneck's 3x3 as torchvision's v1.5), so the parameter
  counts equal torchvision's; `base_width` shrinks it for smoke runs, stem='cifar' keeps small
  images at full resolution in the stem.

Every conv comes from `conv_layer` and every norm from `norm_layer` (norms.layer_factories).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normrepro import catalog

from .layers import ClassifierHead, init_weights, make_stages, needs_projection


def projection(conv_layer, norm_layer, in_channels: int, out_channels: int, stride: int):
    """1x1 conv + norm shortcut where the block changes the shape, else the identity."""
    if not needs_projection(in_channels, out_channels, stride):
        return nn.Identity()
    return nn.Sequential(conv_layer(in_channels, out_channels, 1, stride), norm_layer(out_channels))


class BasicBlock(nn.Module):
    """conv3x3-norm-ReLU-conv3x3-norm, + shortcut, ReLU."""

    def __init__(self, in_channels, width, stride, conv_layer, norm_layer):
        super().__init__()
        self.out_channels = width
        self.conv1 = conv_layer(in_channels, width, 3, stride, 1)
        self.norm1 = norm_layer(width)
        self.conv2 = conv_layer(width, width, 3, 1, 1)
        self.norm2 = norm_layer(width)
        self.shortcut = projection(conv_layer, norm_layer, in_channels, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C_in, H, W]
        out = F.relu(self.norm1(self.conv1(x)))  # [N, width, H / stride, W / stride]
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1-norm-ReLU-conv3x3(stride)-norm-ReLU-conv1x1(4 x width)-norm, + shortcut, ReLU."""

    expansion = 4

    def __init__(self, in_channels, width, stride, conv_layer, norm_layer):
        super().__init__()
        self.out_channels = width * self.expansion
        self.conv1 = conv_layer(in_channels, width, 1)
        self.norm1 = norm_layer(width)
        self.conv2 = conv_layer(width, width, 3, stride, 1)
        self.norm2 = norm_layer(width)
        self.conv3 = conv_layer(width, self.out_channels, 1)
        self.norm3 = norm_layer(self.out_channels)
        self.shortcut = projection(conv_layer, norm_layer, in_channels, self.out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C_in, H, W]
        out = F.relu(self.norm1(self.conv1(x)))  # [N, width, H, W]
        out = F.relu(self.norm2(self.conv2(out)))  # [N, width, H / stride, W / stride]
        out = self.norm3(self.conv3(out))  # [N, 4 * width, H / stride, W / stride]
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """stem -> stages of blocks (base_width x 2^s, the first block of a later stage strides 2)
    -> global average pool -> linear."""

    def __init__(
        self, block, layers, base_width, stem, conv_layer, norm_layer, num_classes, in_channels
    ):
        super().__init__()
        if stem == "imagenet":  # [N, C, H, W] -> [N, b, H / 4, W / 4]
            self.stem = nn.Sequential(
                conv_layer(in_channels, base_width, 7, 2, 3),
                norm_layer(base_width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        else:  # [N, C, H, W] -> [N, b, H, W]
            self.stem = nn.Sequential(
                conv_layer(in_channels, base_width, 3, 1, 1),
                norm_layer(base_width),
                nn.ReLU(inplace=True),
            )
        widths = [base_width * 2**s for s in range(len(layers))]
        self.stages, channels = make_stages(
            block, base_width, widths, layers, conv_layer=conv_layer, norm_layer=norm_layer
        )
        self.head = ClassifierHead(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, num_classes]
        return self.head(self.stages(self.stem(x)))


def cifar_resnet(depth, base_width, **common) -> ResNet:
    """resnet{depth}, depth = 6n + 2: 3 stages of n basic blocks."""
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, base_width, "cifar", **common)


def bottleneck_resnet(depth, base_width, **common) -> ResNet:
    """resnet164 and other depths 9n + 2: 3 stages of n bottleneck blocks."""
    n = (depth - 2) // 9
    return ResNet(Bottleneck, [n] * 3, base_width, "cifar", **common)


def imagenet_resnet(depth, base_width, stem, **common) -> ResNet:
    """resnet18/34/50/101/152 with torchvision's blocks per stage (catalog.IMAGENET_RESNETS)."""
    block, layers = catalog.IMAGENET_RESNETS[depth]
    block = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
    return ResNet(block, layers, base_width, stem, **common)
