"""The model zoo of the partition tests: one small instance of every supported family.

Each entry builds the family's own class (torchvision or timm) with narrow widths and few blocks, so
that the model's own ``forward`` runs, on the smallest input the architecture allows.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.efficientnet import FusedMBConvConfig, MBConvConfig
from torchvision.models.regnet import BlockParams
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

CLASSES = 4
HAS_TIMM = importlib.util.find_spec("timm") is not None


@dataclass(frozen=True)
class ZooModel:
    """A model of the zoo: how to build it and its input size."""

    name: str
    build: Callable[[], nn.Module]
    size: int = 32
    needs_timm: bool = False

    def input(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, self.size, self.size, generator=generator)


def _vgg_like(cls: type[nn.Module], batch_norm: bool) -> nn.Module:
    """The VGG / AlexNet class (its own forward) with narrow features and a narrow classifier of the same layers."""
    with torch.device("meta"):  # the default classifier holds ~10^8 parameters: build it nowhere, then replace it
        model = tvm.VGG(nn.Sequential(), init_weights=False) if cls is tvm.VGG else tvm.AlexNet()
    if cls is tvm.VGG:
        model.features = tvm.vgg.make_layers([8, "M", 16, "M"], batch_norm=batch_norm)
    else:
        model.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )  # fmt: skip
    model.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    layers: list[nn.Module] = []
    width = 16 * 2 * 2
    linears = [layer for layer in model.classifier if isinstance(layer, nn.Linear)]
    for layer in model.classifier:
        if isinstance(layer, nn.Linear):
            out = CLASSES if layer is linears[-1] else 24
            layers.append(nn.Linear(width, out))
            width = out
        else:
            layers.append(copy.deepcopy(layer))
    model.classifier = nn.Sequential(*layers)
    return model


def _efficientnet(v2: bool) -> nn.Module:
    if v2:
        setting = [FusedMBConvConfig(1, 3, 1, 8, 8, 1), FusedMBConvConfig(2, 3, 2, 8, 16, 1), MBConvConfig(2, 3, 2, 16, 16, 2)]
        return tvm.EfficientNet(setting, dropout=0.1, num_classes=CLASSES, last_channel=32)
    setting = [MBConvConfig(1, 3, 1, 8, 8, 1), MBConvConfig(2, 3, 2, 8, 16, 2)]
    return tvm.EfficientNet(setting, dropout=0.1, num_classes=CLASSES)


def _timm(name: str, **kwargs: object) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)


ZOO: list[ZooModel] = [
    ZooModel("resnet_basic", partial(tvm.ResNet, tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)),
    ZooModel(
        "resnext_bottleneck",
        partial(tvm.ResNet, tvm.resnet.Bottleneck, [1, 1, 1, 1], num_classes=CLASSES, groups=4, width_per_group=4),
    ),
    ZooModel(
        "regnet",
        lambda: tvm.RegNet(
            BlockParams.from_init_params(depth=3, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25),
            num_classes=CLASSES,
        ),
    ),
    ZooModel(
        "mobilenet_v2",
        partial(tvm.MobileNetV2, CLASSES, 0.25, [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 1, 2]]),
    ),
    ZooModel("mobilenet_v3_small", partial(tvm.mobilenet_v3_small, num_classes=CLASSES, width_mult=0.25)),
    ZooModel("efficientnet_v1", partial(_efficientnet, False)),
    ZooModel("efficientnet_v2", partial(_efficientnet, True)),
    ZooModel("mnasnet", partial(tvm.MNASNet, 0.25, num_classes=CLASSES)),
    ZooModel("shufflenet_v2", partial(tvm.ShuffleNetV2, [1, 2, 1], [8, 16, 32, 64, 64], num_classes=CLASSES)),
    ZooModel("vgg_bn", partial(_vgg_like, tvm.VGG, True)),
    ZooModel("vgg", partial(_vgg_like, tvm.VGG, False)),
    ZooModel("alexnet", partial(_vgg_like, tvm.AlexNet, False)),
    ZooModel("squeezenet", partial(tvm.squeezenet1_1, num_classes=CLASSES)),
    ZooModel(
        "densenet",
        partial(tvm.DenseNet, growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=CLASSES),
    ),
    ZooModel("googlenet", partial(tvm.GoogLeNet, num_classes=CLASSES, aux_logits=False, init_weights=False)),
    ZooModel(
        "googlenet_transform_input",
        partial(tvm.GoogLeNet, num_classes=CLASSES, aux_logits=False, transform_input=True, init_weights=False),
    ),
    ZooModel("inception_v3", partial(tvm.Inception3, num_classes=CLASSES, aux_logits=False, init_weights=False), size=75),
    ZooModel(
        "convnext",
        partial(tvm.ConvNeXt, [tvm.convnext.CNBlockConfig(8, 16, 2), tvm.convnext.CNBlockConfig(16, None, 1)], num_classes=CLASSES),
    ),
    ZooModel(
        "vit",
        partial(tvm.VisionTransformer, image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=CLASSES),
        size=16,
    ),
    ZooModel(
        "swin",
        partial(tvm.SwinTransformer, patch_size=[2, 2], embed_dim=8, depths=[2, 1], num_heads=[1, 2], window_size=[2, 2], num_classes=CLASSES),
        size=16,
    ),
    ZooModel(
        "swin_v2",
        partial(
            tvm.SwinTransformer, patch_size=[2, 2], embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=[2, 2],
            num_classes=CLASSES, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2,
        ),  # fmt: skip
        size=16,
    ),
    ZooModel("timm_resnet", partial(_timm, "test_resnet"), needs_timm=True),
    ZooModel("timm_efficientnet", partial(_timm, "test_efficientnet"), needs_timm=True),
    ZooModel("timm_mobilenetv3", partial(_timm, "mobilenetv3_small_050"), needs_timm=True),
    ZooModel("timm_convnext", partial(_timm, "test_convnext"), needs_timm=True),
    ZooModel("timm_vit", partial(_timm, "test_vit", img_size=32), needs_timm=True),
    ZooModel("timm_vit_registers", partial(_timm, "test_vit", img_size=32, reg_tokens=2, class_token=True), needs_timm=True),
]
"""Every supported family, small."""


def zoo_params() -> list[object]:
    """``pytest.param`` per zoo model, skipped when it needs timm and timm is absent."""
    import pytest

    return [
        pytest.param(entry, id=entry.name, marks=pytest.mark.skipif(entry.needs_timm and not HAS_TIMM, reason="timm is not installed"))
        for entry in ZOO
    ]
