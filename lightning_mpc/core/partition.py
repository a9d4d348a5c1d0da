"""Cutting a model into blocks whose sequential composition is the model.

:func:`partition` asks the partitioner registered for the model's class
(:mod:`lightning_mpc.core.partitioners`) for the model's natural blocks, merges the blocks that have
nothing to learn into a neighbour, and optionally merges or re-cuts them into ``num_blocks`` blocks,
evenly or balanced by real activation memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from torch import Tensor, nn

from lightning_mpc.core.blocks import (
    BlockSpan,
    block_layout,
    block_parameter_count,
    describe,
    has_trainable_parameters,
    hook_points,
    join_units,
    module_device,
    run_blocks,
)
from lightning_mpc.core.partitioners import REGISTRY, register_partitioner, supported_models
from lightning_mpc.core.partitioners.balance import balance_by_memory
from lightning_mpc.core.partitioners.registry import supported_summary

__all__ = [
    "BALANCES",
    "Balance",
    "BlockSpan",
    "absorb_parameter_free",
    "block_layout",
    "block_parameter_count",
    "describe",
    "hook_points",
    "merge_evenly",
    "module_device",
    "natural_blocks",
    "partition",
    "register_partitioner",
    "run_blocks",
    "supported_models",
    "validate_partition_options",
]

Balance = Literal["memory"]
BALANCES: tuple[str, ...] = ("memory",)


def natural_blocks(model: nn.Module) -> list[list[nn.Module]]:
    """The model's natural blocks as its registered partitioner gives them, each a list of units.

    Raises:
        TypeError: if no partitioner is registered for the model's class (the message lists the
            supported classes and how to register one), or the partitioner returns something else
            than modules.
        ValueError: if the partitioner returns no blocks.
    """
    entry = REGISTRY.lookup(model)
    if entry is None:
        raise TypeError(
            f"Cannot partition a {type(model).__name__}: no partitioner is registered for it or its base classes "
            f"(supported: {supported_summary()}). HINT: pass a list of submodules that the forward applies in "
            "order (configure_blocks() in a LightningModule, or the blocks argument of horizon_backward), or "
            f"teach partition() the class: lightning_mpc.register_partitioner({type(model).__name__}, fn), where "
            "fn(model) returns its blocks in forward order."
        )
    raw = list(entry.fn(model))
    if not raw:
        raise ValueError(
            f"The partitioner for {type(model).__name__} ({entry.name}) returned no blocks. "
            "HINT: give the model at least one submodule."
        )
    groups: list[list[nn.Module]] = []
    for index, item in enumerate(raw):
        units = [item] if isinstance(item, nn.Module) else list(item)
        if not units or not all(isinstance(unit, nn.Module) for unit in units):
            raise TypeError(
                f"Natural block {index} from the partitioner of {type(model).__name__} is {item!r}. "
                "HINT: a partitioner returns modules, or non-empty lists of modules."
            )
        groups.append(units)
    return groups


def absorb_parameter_free(groups: Sequence[Sequence[nn.Module]]) -> list[list[nn.Module]]:
    """Merge every group without trainable parameters into the group before it (the first into the next).

    Pieces with nothing to learn (activations, pooling, flatten) then get no local head and do not count
    toward the horizon. Merging into the preceding block puts an in-place activation at the end of a
    block, where it works on that block's own output, instead of at the start of the next one.
    """
    merged: list[list[nn.Module]] = []
    pending: list[nn.Module] = []
    for group in groups:
        units = list(group)
        if any(has_trainable_parameters(unit) for unit in units):
            merged.append(pending + units)
            pending = []
        elif merged:
            merged[-1].extend(units)
        else:
            pending.extend(units)
    if pending:  # nothing learns anywhere: one block
        merged.append(pending)
    return merged


def merge_evenly(groups: Sequence[Sequence[nn.Module]], num_blocks: int) -> list[list[nn.Module]]:
    """Merge consecutive groups into ``num_blocks`` groups holding as equal numbers of them as possible.

    Raises:
        ValueError: if ``num_blocks`` is below 1 or above the number of groups.
    """
    count = len(groups)
    if not 1 <= num_blocks <= count:
        raise ValueError(
            f"num_blocks={num_blocks} cannot be made from {count} natural blocks by merging. HINT: pass "
            f"1 <= num_blocks <= {count}, or balance='memory' to cut inside the natural blocks as well."
        )
    size, extra = divmod(count, num_blocks)
    merged: list[list[nn.Module]] = []
    start = 0
    for index in range(num_blocks):
        stop = start + size + (1 if index < extra else 0)
        merged.append([unit for group in groups[start:stop] for unit in group])
        start = stop
    return merged


def validate_partition_options(num_blocks: int | None, balance: str | None) -> None:
    """Check ``num_blocks`` and ``balance`` before any model is seen (strategies call it at construction).

    Raises:
        ValueError: for a ``num_blocks`` below 1 or an unknown ``balance``.
    """
    if num_blocks is not None and (isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1):
        raise ValueError(f"num_blocks must be a positive integer, got {num_blocks!r}. HINT: pass e.g. num_blocks=8.")
    if balance is not None and balance not in BALANCES:
        raise ValueError(f"Unknown balance={balance!r}. HINT: use one of {', '.join(map(repr, BALANCES))} or None.")


def partition(
    model: nn.Module,
    *,
    num_blocks: int | None = None,
    balance: Balance | None = None,
    example_input: Tensor | Callable[[Sequence[nn.Module]], Tensor] | None = None,
    merge_parameter_free: bool = True,
) -> list[nn.Module]:
    """Cut ``model`` into blocks whose sequential composition equals ``model(x)``.

    The cut follows the model's own ``forward`` (the functional steps between its submodules, such as
    ``torch.flatten`` before a classifier, belong to the next block), and inside that forward each block
    is seen through hooks on its first and last module, which is how ``strategy="mpc"`` runs an
    unmodified ``training_step``. The blocks share parameters with ``model``; nothing is copied. A bare
    parameter the forward uses between blocks (a ViT's class token and position embedding) belongs to the
    block that uses it.

    Supported (see :func:`lightning_mpc.supported_models`; add your own with
    :func:`lightning_mpc.register_partitioner`):

    * ``nn.Sequential``: its children, in order.
    * torchvision ResNet/ResNeXt/Wide ResNet, RegNet, MobileNetV2/V3, EfficientNet V1/V2, MNASNet,
      ShuffleNetV2, VGG, AlexNet, SqueezeNet, DenseNet, GoogLeNet and Inception v3 (built with
      ``aux_logits=False``), ConvNeXt, ViT and Swin (V1/V2): the family's natural unit (stem, residual or
      inverted-residual block, encoder layer, pooled classifier).
    * timm ResNet, ConvNeXt, EfficientNet/MobileNet and VisionTransformer (with timm installed).

    Blocks without trainable parameters (an activation or pooling that is its own ``Sequential`` child)
    merge into the block before them, so every block learns and the horizon counts learning blocks. To
    keep one block per child as before, pass ``merge_parameter_free=False`` (or return the children from
    ``configure_blocks()``).

    Args:
        model: the network to cut.
        num_blocks: how many blocks to return. Without ``balance``, consecutive natural blocks are merged
            into groups of equal counts; with ``balance="memory"`` the cuts are chosen by memory, also
            inside natural blocks where their units allow (a ResNet stem splits into conv, norm, activation
            and pooling). Default: the natural blocks.
        balance: ``"memory"`` chooses the cuts so that the largest block's real memory at ``h = 1``
            (activations, input, output gradient and backward temporaries, measured with the allocator on
            ``example_input``) is as small as possible, torchgpipe's ``balance_by_size`` applied to horizon
            training. The cuts may fall inside natural blocks where the partitioner lists smaller units,
            also before in-place operations. Balanced for ``h = 1``; larger horizons may hold more than with
            the natural cut.
        example_input: with ``balance``: block 0's input at the training batch size, or a function that
            returns it given the default blocks (how the strategies capture it from the LightningModule's
            own forward; it is called only when needed).
        merge_parameter_free: merge blocks without trainable parameters into a neighbour.

    Returns:
        The blocks, in order.

    Raises:
        TypeError: for a model no partitioner is registered for, with the supported list and a hint.
        ValueError: for a ``num_blocks`` the model cannot be cut into, or ``balance`` without an input.
    """
    validate_partition_options(num_blocks, balance)
    groups = natural_blocks(model)
    if balance is not None:
        if example_input is None:
            raise ValueError(
                f"partition(balance={balance!r}) measures memory on an example and got none. "
                "HINT: pass example_input= (block 0's input at the training batch size)."
            )
        default = absorb_parameter_free(groups)
        if callable(example_input):
            example_input = example_input([join_units(group) for group in default])
        units = [unit for group in groups for unit in group]
        target = num_blocks if num_blocks is not None else len(default)
        return [join_units(group) for group in balance_by_memory(units, example_input, target)]
    if merge_parameter_free:
        groups = absorb_parameter_free(groups)
    if num_blocks is not None:
        groups = merge_evenly(groups, num_blocks)
    return [join_units(group) for group in groups]
