"""Small models shared by the tests: each builder returns (model, blocks, heads, x, y)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from lightning_mpc.core.heads import infer_heads
from lightning_mpc.core.partition import partition

Case = tuple[nn.Module, list[nn.Module], nn.ModuleList, Tensor, Tensor]


def auto_heads(blocks: list[nn.Module], x: Tensor) -> nn.ModuleList:
    """Heads built from the shapes of a no-grad forward, as the strategy does."""
    return infer_heads(blocks, x)


def mlp(depth: int = 6, width: int = 16, in_features: int = 12, classes: int = 5, batch: int = 8) -> Case:
    layers: list[nn.Module] = [nn.Sequential(nn.Linear(in_features, width), nn.Tanh())]
    layers += [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth - 2)]
    layers.append(nn.Linear(width, classes))
    model = nn.Sequential(*layers)
    x = torch.randn(batch, in_features)
    y = torch.randint(0, classes, (batch,))
    blocks = partition(model)
    return model, blocks, auto_heads(blocks, x), x, y


def cnn_bn(batch: int = 6, classes: int = 4) -> Case:
    """Six blocks; the pooling children have no parameters and join the block before them."""
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Sequential(nn.Linear(16, 16), nn.ReLU()),
        nn.Linear(16, classes),
    )
    x = torch.randn(batch, 3, 8, 8)
    y = torch.randint(0, classes, (batch,))
    blocks = partition(model)
    return model, blocks, auto_heads(blocks, x), x, y


def resnet(name: str, batch: int = 2, size: int = 32, classes: int = 10) -> Case:
    model = getattr(torchvision.models, name)(weights=None, num_classes=classes)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch,))
    blocks = partition(model)
    return model, blocks, auto_heads(blocks, x), x, y


def transformer_tokens(batch: int = 4, tokens: int = 5, features: int = 8, classes: int = 3) -> Case:
    model = nn.Sequential(
        nn.Linear(features, features),
        nn.TransformerEncoderLayer(features, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True),
        nn.Sequential(nn.Flatten(), nn.Linear(tokens * features, classes)),
    )
    x = torch.randn(batch, tokens, features)
    y = torch.randint(0, classes, (batch,))
    blocks = partition(model)
    return model, blocks, auto_heads(blocks, x), x, y


CASES: dict[str, Callable[[], Case]] = {
    "mlp": mlp,
    "cnn_bn": cnn_bn,
    "resnet18": lambda: resnet("resnet18"),
    "resnet50": lambda: resnet("resnet50"),
}


def to_double(case: Case) -> Case:
    model, blocks, heads, x, y = case
    model.double()
    heads.double()
    return model, blocks, heads, x.double(), y


def clone_case(case: Case) -> Any:
    """A deep copy of model and heads whose blocks are re-derived from the copy."""
    import copy

    model, blocks, heads, x, y = case
    model_copy, heads_copy = copy.deepcopy((model, heads))
    return model_copy, partition(model_copy), heads_copy, x, y
