"""Plain networks (no Lightning) that the recipes, benchmarks and memory tests share.

Every builder returns an ``nn.Sequential`` whose children are the natural blocks, so
:func:`lightning_mpc.partition` cuts it without help and ``len(net)`` is the number of blocks ``T``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicResidualBlock", "cifar_resnet_depth", "mlp_network"]


def mlp_network(
    num_blocks: int = 8,
    width: int = 1024,
    in_features: int = 784,
    num_classes: int = 10,
    batchnorm: bool = True,
) -> nn.Sequential:
    """``num_blocks`` blocks: ``Linear (+ BatchNorm1d) + ReLU`` to ``width``, and a last ``Linear`` to the classes.

    Args:
        num_blocks: ``T >= 2``.
        width: hidden width.
        in_features: input features (inputs must already be flat).
        num_classes: outputs of the last block.
        batchnorm: put a ``BatchNorm1d`` after every hidden ``Linear``.

    Raises:
        ValueError: for fewer than 2 blocks.
    """
    if num_blocks < 2:
        raise ValueError(f"mlp_network needs num_blocks >= 2, got {num_blocks}. HINT: pass num_blocks >= 2.")

    def hidden(fan_in: int) -> nn.Sequential:
        norm: list[nn.Module] = [nn.BatchNorm1d(width)] if batchnorm else []
        return nn.Sequential(nn.Linear(fan_in, width), *norm, nn.ReLU())

    widths = [in_features] + [width] * (num_blocks - 2)
    return nn.Sequential(*(hidden(fan_in) for fan_in in widths), nn.Linear(width, num_classes))


class BasicResidualBlock(nn.Module):
    """The residual block of He et al.'s CIFAR ResNets: two 3x3 convolutions with BatchNorm, identity or 1x1 shortcut.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (2 where a stage halves the resolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def cifar_resnet_depth(depth: int = 20, num_classes: int = 10, width: int = 16, in_channels: int = 3) -> nn.Sequential:
    """He et al.'s CIFAR ResNet of ``depth = 6n + 2`` layers (ResNet-20, -32, -44, -56, -110) as ``n*3 + 2`` blocks.

    Blocks: the stem (3x3 convolution, BatchNorm, ReLU), ``3n`` residual blocks in three stages of
    ``width``, ``2*width`` and ``4*width`` channels (strides 1, 2, 2; 1x1 projection shortcuts where the
    shape changes), and the classifier (global average pool, flatten, linear). ResNet-110 has 56 blocks.

    Args:
        depth: ``6n + 2`` for an integer ``n >= 1``.
        num_classes: outputs of the classifier.
        width: channels of the first stage (16 in the paper).
        in_channels: input channels (3 for CIFAR, 1 for digits).

    Raises:
        ValueError: if ``depth`` is not ``6n + 2``.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"A CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}. HINT: pick one of those depths."
        )
    per_stage = (depth - 2) // 6
    stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
    blocks: list[nn.Module] = [stem]
    channels = width
    for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
        for index in range(per_stage):
            stride = 2 if stage > 0 and index == 0 else 1
            blocks.append(BasicResidualBlock(channels, stage_width, stride))
            channels = stage_width
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, num_classes))
    return nn.Sequential(*blocks, classifier)
