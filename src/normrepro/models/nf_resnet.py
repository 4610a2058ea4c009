"""Normalizer-free ResNet of seed 002 (Brock et al. 2021, arXiv 2101.08692): no norm layers.

Signal propagation is kept by construction instead of by normalization:
- every conv is a scaled weight-standardized conv (norms.ScaledStdConv2d) with a bias: after a
  ReLU (gamma = sqrt(2) / sqrt(1 - 1/pi)) it maps unit variance to unit variance; the stem conv
  sees the image, not a ReLU, and has gamma = 1;
- a block computes h_{i+1} = shortcut + alpha * f(relu(h_i / beta_i)), beta_i = sqrt(Var(h_i))
  predicted by the recurrence Var(h_{i+1}) = Var(h_i) + alpha^2, starting at 1 (the stem on a
  unit-variance image); a transition block (first of a stack, channels or stride change) has a
  1x1 conv shortcut on relu(h_i / beta_i), so the expected variance restarts at 1 + alpha^2;
- the residual branch f is seed 002's NFNet-style bottleneck without squeeze-excite:
  ReLU-conv1x1(width), ReLU-conv3x3(width, stride), ReLU-conv3x3(width), ReLU-conv1x1(2 x width)
  (bottleneck ratio 0.5 as NFNets). Transitions use a strided 1x1 conv, not NFNets' average
  pool, which would shrink the variance below the recurrence's prediction;
- 3 stacks of `blocks_per_stack` blocks (5 in seed 002) at width base_width x (1, 2, 4), outputs 2x that,
  a stem conv3x3 to base_width; seed 002 does not give its widths, base_width=32 is our choice
  (2.4M parameters); He init; a final ReLU, global pool and a linear layer with small weights
  (std 0.01, zero bias; NF-ResNets use zeros).
- zero_init_last (off by default): each branch's last conv starts with gain 0 (SkipInit), so every
  block starts as its shortcut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ClassifierHead, init_weights, needs_projection


class NFBlock(nn.Module):
    """h -> shortcut + alpha * f(relu(h / beta)), shortcut = h or conv1x1(relu(h / beta))."""

    expansion = 2

    def __init__(self, in_channels, width, stride, conv_layer, alpha: float, beta: float):
        super().__init__()
        self.alpha, self.beta = alpha, beta  # beta: predicted std of this block's input
        self.out_channels = width * self.expansion
        self.conv1 = conv_layer(in_channels, width, 1, bias=True)
        self.conv2 = conv_layer(width, width, 3, stride, 1, bias=True)
        self.conv3 = conv_layer(width, width, 3, 1, 1, bias=True)
        self.conv4 = conv_layer(width, self.out_channels, 1, bias=True)
        self.shortcut = None  # transition block: its output variance restarts at 1 + alpha^2
        if needs_projection(in_channels, self.out_channels, stride):
            self.shortcut = conv_layer(in_channels, self.out_channels, 1, stride, bias=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [N, C_in, H, W]
        pre = F.relu(h / self.beta)  # unit-variance input, rectified
        shortcut = h if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)  # [N, width, H, W]
        out = self.conv2(F.relu(out))  # [N, width, H / stride, W / stride]
        out = self.conv3(F.relu(out))
        out = self.conv4(F.relu(out))  # [N, 2 * width, H / stride, W / stride]
        return shortcut + self.alpha * out


class NFResNet(nn.Module):
    """stem conv -> 3 stacks of NF blocks -> ReLU -> pool -> linear."""

    def __init__(
        self,
        blocks_per_stack,
        base_width,
        alpha,
        zero_init_last,
        conv_layer,
        num_classes,
        in_channels,
    ):
        super().__init__()
        self.stem = conv_layer(in_channels, base_width, 3, 1, 1, bias=True, gamma=1.0)
        expected_var, channels, stacks = 1.0, base_width, []
        for s in range(3):
            stack = []
            for i in range(blocks_per_stack):
                stride = 2 if s > 0 and i == 0 else 1
                block = NFBlock(
                    channels, base_width * 2**s, stride, conv_layer, alpha, expected_var**0.5
                )
                expected_var = (1.0 if block.shortcut is not None else expected_var) + alpha**2
                channels = block.out_channels
                stack.append(block)
            stacks.append(nn.Sequential(*stack))
        self.stages = nn.Sequential(*stacks)
        self.head = ClassifierHead(channels, num_classes)
        init_weights(self)
        nn.init.normal_(self.head[-1].weight, std=0.01)
        nn.init.zeros_(self.head[-1].bias)
        if zero_init_last:
            for block in self.modules():
                if isinstance(block, NFBlock):
                    nn.init.zeros_(block.conv4.gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, num_classes]
        out = self.stages(self.stem(x))  # [N, 8 * base_width, H / 4, W / 4]
        return self.head(F.relu(out))


def nf_resnet(blocks_per_stack, base_width, alpha, zero_init_last, norm_layer, **common):
    """nf_resnet; built with norm 'none' only, so `norm_layer` (the identity) is not used."""
    del norm_layer
    return NFResNet(blocks_per_stack, base_width, alpha, zero_init_last, **common)
