"""torchvision's mobile networks: MobileNetV2/V3, EfficientNet V1/V2, MNASNet and ShuffleNetV2.

Each is cut into its stem, every inverted-residual (or shuffle) block, its last convolution and the
pooled classifier, following the model's ``forward`` for the pooling and flattening between them.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import EfficientNet, MNASNet, MobileNetV2, MobileNetV3, ShuffleNetV2

from lightning_mpc.core.blocks import BlockSpan
from lightning_mpc.core.partitioners.common import members, stage_blocks
from lightning_mpc.core.partitioners.pieces import SpatialMean
from lightning_mpc.core.partitioners.registry import NaturalBlocks, register_partitioner

__all__ = ["cut_efficientnet", "cut_mnasnet", "cut_mobilenet_v2", "cut_mobilenet_v3", "cut_shufflenet_v2"]


def _stem_blocks_conv(features: nn.Sequential) -> list[list[nn.Module] | nn.Module]:
    """``features`` = stem, stages or blocks, last convolution: the stem and last conv split into their layers."""
    children = list(features)
    return [members(children[0]), *stage_blocks(children[1:-1]), members(children[-1])]


@register_partitioner(MobileNetV2)
def cut_mobilenet_v2(model: MobileNetV2) -> NaturalBlocks:
    """The stem, every inverted residual, the last 1x1 convolution, the pooled classifier."""
    # MobileNetV2.forward pools with F.adaptive_avg_pool2d and flattens before the classifier.
    classifier = BlockSpan(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(1), model.classifier, entry=2)
    return [*_stem_blocks_conv(model.features), classifier]


@register_partitioner(MobileNetV3)
def cut_mobilenet_v3(model: MobileNetV3) -> NaturalBlocks:
    """The stem, every inverted residual, the last 1x1 convolution, the pooled classifier."""
    classifier = [model.avgpool, BlockSpan(nn.Flatten(1), model.classifier, entry=1)]
    return [*_stem_blocks_conv(model.features), classifier]


@register_partitioner(EfficientNet)
def cut_efficientnet(model: EfficientNet) -> NaturalBlocks:
    """The stem, every MBConv / FusedMBConv block, the last 1x1 convolution, the pooled classifier."""
    # The classifier starts with Dropout(inplace=True): it stays with the pooling, which makes its input.
    classifier = [model.avgpool, BlockSpan(nn.Flatten(1), model.classifier, entry=1)]
    return [*_stem_blocks_conv(model.features), classifier]


@register_partitioner(MNASNet)
def cut_mnasnet(model: MNASNet) -> NaturalBlocks:
    """The stem layers, every inverted residual of the stacks, the last convolution, the pooled classifier."""
    blocks: list[list[nn.Module] | nn.Module] = []
    loose: list[nn.Module] = []  # consecutive layers outside the stacks (the stem, the last convolution)
    for layer in model.layers:
        if isinstance(layer, nn.Sequential):
            if loose:
                blocks.append(loose)
                loose = []
            blocks.extend(layer)
        else:
            loose.append(layer)
    if loose:
        blocks.append(loose)
    # MNASNet.forward takes x.mean([2, 3]) before the classifier (whose Dropout works in place).
    blocks.append(BlockSpan(SpatialMean(), model.classifier, entry=1))
    return blocks


@register_partitioner(ShuffleNetV2)
def cut_shufflenet_v2(model: ShuffleNetV2) -> NaturalBlocks:
    """The stem (conv1, maxpool), every shuffle block, conv5, the pooled classifier."""
    stem = [*members(model.conv1), model.maxpool]
    stages = stage_blocks([model.stage2, model.stage3, model.stage4])
    # ShuffleNetV2.forward takes x.mean([2, 3]) before fc.
    return [stem, *stages, members(model.conv5), BlockSpan(SpatialMean(), model.fc, entry=1)]
