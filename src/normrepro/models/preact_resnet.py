"""Pre-activation ResNets (He et al. 2016, Identity Mappings): norm-ReLU-conv, clean identity path.

- `preact_resnet`: preact_resnet164, depth 9n+2, bottleneck blocks (norm-ReLU-conv1x1,
  norm-ReLU-conv3x3(stride), norm-ReLU-conv1x1 to 4 x width); second row of seed 000's Table 2.
- `wide_resnet`: wrn{depth}_{k} of Zagoruyko & Komodakis 2016, depth 6n+4: basic blocks
  norm-ReLU-conv3x3(stride), norm-ReLU-dropout-conv3x3 at 16k, 32k, 64k channels; WRN-28-10 has
  36.5M parameters. The dropout (0.3 in seed 000's recipe) sits between the two convs.

Both: a 3x3 stem conv without norm (the first block pre-activates it), 3 stages, a final
norm-ReLU before the pool, no conv biases. Where the shape changes the shortcut is a 1x1 conv on
the pre-activated input (norm-ReLU of x), as in both papers' code; otherwise it is x itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ClassifierHead, init_weights, make_stages, needs_projection


class PreActBlock(nn.Module):
    """Shared pre-activation plumbing: out = branch(relu(norm1(x))) + shortcut.

    The shortcut is x, or a 1x1 conv of relu(norm1(x)) where the shape changes.
    """

    def __init__(self, in_channels, out_channels, stride, conv_layer, norm_layer):
        super().__init__()
        self.out_channels = out_channels
        self.norm1 = norm_layer(in_channels)
        self.shortcut = None
        if needs_projection(in_channels, out_channels, stride):
            self.shortcut = conv_layer(in_channels, out_channels, 1, stride)

    def branch(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C_in, H, W]
        pre = F.relu(self.norm1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        return self.branch(pre) + shortcut  # [N, C_out, H / stride, W / stride]


class WideBasic(PreActBlock):
    """WRN block: conv3x3(stride) on the pre-activation, norm-ReLU-dropout-conv3x3."""

    def __init__(self, in_channels, width, stride, conv_layer, norm_layer, dropout):
        super().__init__(in_channels, width, stride, conv_layer, norm_layer)
        self.conv1 = conv_layer(in_channels, width, 3, stride, 1)
        self.norm2 = norm_layer(width)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv_layer(width, width, 3, 1, 1)

    def branch(self, pre: torch.Tensor) -> torch.Tensor:
        out = self.conv1(pre)  # [N, width, H / stride, W / stride]
        return self.conv2(self.dropout(F.relu(self.norm2(out))))


class PreActBottleneck(PreActBlock):
    """conv1x1 on the pre-activation, norm-ReLU-conv3x3(stride), norm-ReLU-conv1x1(4 x width)."""

    expansion = 4

    def __init__(self, in_channels, width, stride, conv_layer, norm_layer):
        super().__init__(in_channels, width * self.expansion, stride, conv_layer, norm_layer)
        self.conv1 = conv_layer(in_channels, width, 1)
        self.norm2 = norm_layer(width)
        self.conv2 = conv_layer(width, width, 3, stride, 1)
        self.norm3 = norm_layer(width)
        self.conv3 = conv_layer(width, self.out_channels, 1)

    def branch(self, pre: torch.Tensor) -> torch.Tensor:
        out = self.conv1(pre)  # [N, width, H, W]
        out = self.conv2(F.relu(self.norm2(out)))  # [N, width, H / stride, W / stride]
        return self.conv3(F.relu(self.norm3(out)))  # [N, 4 * width, H / stride, W / stride]


class PreActResNet(nn.Module):
    """stem conv -> 3 stages at stage_width x (1, 2, 4) -> norm-ReLU -> pool -> linear."""

    def __init__(
        self,
        block,
        num_blocks,
        base_width,
        stage_width,
        conv_layer,
        norm_layer,
        num_classes,
        in_channels,
        **block_kw,
    ):
        super().__init__()
        self.stem = conv_layer(in_channels, base_width, 3, 1, 1)  # [N, b, H, W]
        widths, kw = [stage_width * 2**s for s in range(3)], dict(block_kw, conv_layer=conv_layer)
        self.stages, channels = make_stages(
            block, base_width, widths, [num_blocks] * 3, norm_layer=norm_layer, **kw
        )
        self.final_norm = norm_layer(channels)
        self.head = ClassifierHead(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, num_classes]
        out = self.stages(self.stem(x))  # [N, C_last, H / 4, W / 4]
        return self.head(F.relu(self.final_norm(out)))


def preact_resnet(depth, base_width, **common) -> PreActResNet:
    """preact_resnet164 and other depths 9n + 2: 3 stages of n pre-activation bottlenecks."""
    n = (depth - 2) // 9
    return PreActResNet(PreActBottleneck, n, base_width, base_width, **common)


def wide_resnet(depth, width, base_width, dropout, **common) -> PreActResNet:
    """wrn{depth}_{width}, depth = 6n + 4: 3 stages of n wide basic blocks."""
    n = (depth - 4) // 6
    return PreActResNet(WideBasic, n, base_width, base_width * width, dropout=dropout, **common)
