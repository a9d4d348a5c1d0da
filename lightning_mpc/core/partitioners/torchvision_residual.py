"""torchvision's residual networks: ResNet (with ResNeXt and Wide ResNet) and RegNet."""

from __future__ import annotations

from torch import nn
from torchvision.models import RegNet, ResNet

from lightning_mpc.core.blocks import BlockSpan
from lightning_mpc.core.partitioners.common import members, stage_blocks
from lightning_mpc.core.partitioners.registry import NaturalBlocks, register_partitioner

__all__ = ["cut_regnet", "cut_resnet"]


@register_partitioner(ResNet)
def cut_resnet(model: ResNet) -> NaturalBlocks:
    """The stem (conv1, bn1, relu, maxpool), every residual block, the pooled classifier (avgpool, flatten, fc)."""
    stem = [model.conv1, model.bn1, model.relu, model.maxpool]
    residual = stage_blocks([model.layer1, model.layer2, model.layer3, model.layer4])
    # ResNet.forward flattens between avgpool and fc.
    classifier = [model.avgpool, BlockSpan(nn.Flatten(1), model.fc, entry=1)]
    return [stem, *residual, classifier]


@register_partitioner(RegNet)
def cut_regnet(model: RegNet) -> NaturalBlocks:
    """The stem, every residual bottleneck block, the pooled classifier (avgpool, flatten, fc)."""
    classifier = [model.avgpool, BlockSpan(nn.Flatten(1), model.fc, entry=1)]
    return [members(model.stem), *stage_blocks(model.trunk_output), classifier]
