"""Cutting a model into blocks whose sequential composition is the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BlockSpan", "hook_points", "is_resnet", "partition"]


class BlockSpan(nn.Sequential):
    """Several consecutive submodules of a parent, run as one block.

    The parent's own ``forward`` calls the submodules one by one (for example torchvision's
    ``ResNet.forward`` calls ``conv1``, ``bn1``, ``relu`` and ``maxpool``), so the span records which
    of them the parent calls first (``mpc_entry``) and last (``mpc_exit``): hooks on those two see the
    block's input and output when the parent's forward runs. Calling the span itself runs its
    modules in order, which is the same computation.

    Args:
        *modules: the submodules, in the order the parent applies them.
        entry: index in ``modules`` of the first module the parent calls.
        exit: index in ``modules`` of the last module the parent calls.
    """

    def __init__(self, *modules: nn.Module, entry: int = 0, exit: int = -1) -> None:  # noqa: A002
        super().__init__(*modules)
        self._entry_index = entry
        self._exit_index = exit

    @property
    def mpc_entry(self) -> nn.Module:
        """The submodule whose input is the block's input."""
        return self[self._entry_index]

    @property
    def mpc_exit(self) -> nn.Module:
        """The submodule whose output is the block's output."""
        return self[self._exit_index]


def hook_points(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules whose input and output are ``block``'s, when a parent's forward runs it."""
    entry = getattr(block, "mpc_entry", block)
    exit_ = getattr(block, "mpc_exit", block)
    return entry, exit_


def is_resnet(model: nn.Module) -> bool:
    """Whether ``model`` is a torchvision ``ResNet`` (any depth, BasicBlock or Bottleneck)."""
    try:
        from torchvision.models import ResNet
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return isinstance(model, ResNet)


def _partition_resnet(model: nn.Module) -> list[nn.Module]:
    stem = BlockSpan(model.conv1, model.bn1, model.relu, model.maxpool)
    residual = [block for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for block in layer]
    classifier = BlockSpan(model.avgpool, nn.Flatten(1), model.fc, entry=0, exit=2)
    return [stem, *residual, classifier]


def partition(model: nn.Module) -> list[nn.Module]:
    """Cut ``model`` into blocks whose sequential composition equals ``model(x)``.

    Supported:

    * ``nn.Sequential``: its children, in order.
    * torchvision ``ResNet`` (resnet18 ... resnet152, wide and ResNeXt variants): the stem
      (``conv1, bn1, relu, maxpool``), every residual block of ``layer1..layer4``, and the pooled
      classifier (``avgpool``, flatten, ``fc``).

    The blocks share parameters with ``model``; nothing is copied.

    Args:
        model: the network to cut.

    Returns:
        The blocks, in order.

    Raises:
        TypeError: for any other kind of module, with a hint on how to supply blocks.
    """
    if is_resnet(model):
        return _partition_resnet(model)
    if isinstance(model, nn.Sequential):
        blocks = list(model.children())
        if not blocks:
            raise ValueError(
                "Cannot partition an empty nn.Sequential. HINT: give the Sequential at least one module."
            )
        return blocks
    raise TypeError(
        f"Cannot partition a {type(model).__name__}: supported are nn.Sequential and torchvision ResNet. "
        "HINT: pass a list of submodules that the forward applies in order (configure_blocks() in a "
        "LightningModule, or the blocks argument of horizon_backward)."
    )


def run_blocks(blocks: Sequence[nn.Module], x: Tensor) -> Tensor:
    """Apply ``blocks`` in order (the composition :func:`partition` promises equals the model)."""
    for block in blocks:
        x = block(x)
    return x


def block_parameter_count(block: nn.Module) -> int:
    """Number of trainable parameter elements in ``block``."""
    return sum(p.numel() for p in block.parameters() if p.requires_grad)


def describe(block: nn.Module) -> str:
    """Short name of a block for messages and summaries, e.g. ``BlockSpan(Conv2d..MaxPool2d)``."""
    if isinstance(block, BlockSpan):
        names = [type(m).__name__ for m in block]
        return f"BlockSpan({names[0]}..{names[-1]})"
    return type(block).__name__


def module_device(module: nn.Module) -> torch.device:
    """Device of the first parameter or buffer of ``module`` (CPU if it has none)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return torch.device("cpu")
