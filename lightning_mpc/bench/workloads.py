"""Benchmark workloads: a network cut into blocks, its local heads and one batch, built with a fixed seed.

The networks come from :mod:`lightning_mpc.recipes.networks` (the MLP and He et al.'s CIFAR ResNets) and
torchvision (``resnet18``, random weights, nothing downloaded). Names:

- ``mlp`` (8 blocks) or ``mlp-N`` (``N`` blocks): ``Linear + BatchNorm1d + ReLU`` blocks 1024 wide on
  flattened 28x28 inputs, then a ``Linear`` to 10 classes;
- ``resnet18``: torchvision's ResNet-18 (ImageNet stem) on 3x32x32 inputs, 10 blocks;
- ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``, ``resnet110``: the CIFAR ResNets on 3x32x32 inputs,
  ``3n + 2`` blocks (stem, residual blocks, classifier).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.core.engine import iter_parameters
from lightning_mpc.core.heads import block_output_shapes, build_heads, head_specs_for
from lightning_mpc.core.partition import partition
from lightning_mpc.recipes.networks import cifar_resnet_depth, mlp_network

__all__ = ["DEFAULT_BATCH", "WORKLOAD_NAMES", "Workload", "local_heads", "make_workload", "network_blocks"]

WORKLOAD_NAMES = "mlp, mlp-N (N blocks), resnet18, resnet20, resnet32, resnet44, resnet56, resnet110"
"""The names :func:`make_workload` accepts, for help texts and errors."""

DEFAULT_BATCH = {"mlp": 512, "resnet18": 32, "cifar_resnet": 16}
"""Batch size per family when none is given (sized for a step of about a second on one CPU core)."""

_MLP_WIDTH = 1024


@dataclass
class Workload:
    """A model cut into blocks, its local heads and one batch.

    Attributes:
        name: the workload's name (see :data:`WORKLOAD_NAMES`).
        blocks: the model's blocks, applied in order.
        heads: one local head per block but the last (for MPC).
        x: the batch's input.
        y: the batch's integer class targets.
        description: the network and batch in words, for table titles.
    """

    name: str
    blocks: list[nn.Module]
    heads: nn.ModuleList
    x: Tensor
    y: Tensor
    description: str

    @property
    def num_blocks(self) -> int:
        """``T``."""
        return len(self.blocks)

    def modules(self) -> list[nn.Module]:
        """Every block and head."""
        return [*self.blocks, *self.heads]

    def parameters(self) -> list[nn.Parameter]:
        """Every trainable block and head parameter, each once."""
        return list(iter_parameters(self.modules()))

    @staticmethod
    def loss_fn(prediction: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy, for the final output and every local head."""
        return F.cross_entropy(prediction, target)


def local_heads(blocks: list[nn.Module], x: Tensor) -> nn.ModuleList:
    """The default local heads of ``blocks`` (pooled + linear on feature maps, linear on vectors).

    Sized by a dry run on ``x`` (:func:`~lightning_mpc.core.heads.block_output_shapes`).
    """
    return build_heads(head_specs_for(block_output_shapes(blocks, x)))


def network_blocks(name: str) -> tuple[list[nn.Module], tuple[int, ...], str, str]:
    """The blocks of a named network, its input shape per sample, its family and a description.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "mlp" or re.fullmatch(r"mlp-\d+", name):
        depth = 8 if name == "mlp" else int(name.split("-")[1])
        text = f"{depth}-block MLP (Linear + BatchNorm1d + ReLU, {_MLP_WIDTH} wide)"
        return list(mlp_network(num_blocks=depth, width=_MLP_WIDTH)), (784,), "mlp", text
    if name == "resnet18":
        import torchvision

        blocks = partition(torchvision.models.resnet18(weights=None, num_classes=10))
        return blocks, (3, 32, 32), "resnet18", "torchvision ResNet-18 (ImageNet stem) on 32x32"
    match = re.fullmatch(r"resnet(\d+)", name)
    if match and int(match.group(1)) >= 8 and (int(match.group(1)) - 2) % 6 == 0:
        depth = int(match.group(1))
        net = cifar_resnet_depth(depth)
        return list(net), (3, 32, 32), "cifar_resnet", f"CIFAR ResNet-{depth} (He et al.), {len(net)} blocks"
    raise ValueError(f"Unknown workload {name!r}. HINT: choose from {WORKLOAD_NAMES}.")


def make_workload(
    name: str, *, batch: int | None = None, device: torch.device | str = "cpu", seed: int = 0
) -> Workload:
    """Build a named workload with a fixed seed: random inputs, random class targets, fresh weights.

    Args:
        name: see :data:`WORKLOAD_NAMES`.
        batch: the batch size (default: :data:`DEFAULT_BATCH` of the network's family).
        device: where the model and the batch live.
        seed: seeds the weights, the heads and the batch.

    Raises:
        ValueError: for an unknown name or a batch below 2 (BatchNorm needs two samples).
    """
    torch.manual_seed(seed)
    blocks, shape, family, text = network_blocks(name)
    size = DEFAULT_BATCH[family] if batch is None else batch
    if size < 2:
        raise ValueError(f"Workload {name!r}: batch {size} is below 2. HINT: BatchNorm needs a batch of 2 or more.")
    x = torch.randn(size, *shape)
    y = torch.randint(0, 10, (size,))
    blocks = [block.to(device).train() for block in blocks]
    x, y = x.to(device), y.to(device)
    heads = local_heads(blocks, x).to(device).train()
    return Workload(name, blocks, heads, x, y, f"{text}, batch {size}")
