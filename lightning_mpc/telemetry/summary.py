"""The partition summary: one row per block, like Lightning's model summary.

Block index, where the block lives in the model, its parameters and output shape, its local head,
the depth whose loss trains it, and the activation bytes per sample its graph saves for backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from lightning_mpc.core.heads import LocalHead
from lightning_mpc.core.partition import BlockSpan, describe
from lightning_mpc.telemetry.probes import BackpropMemory

__all__ = ["PartitionRow", "format_bytes", "format_count", "module_path", "partition_rows", "render_partition"]


@dataclass(frozen=True)
class PartitionRow:
    """One block of the partition.

    Attributes:
        index: the block's position ``k``.
        module: where the block lives in the model (``net.3``; ``net.conv1..net.maxpool`` for a span).
        kind: the block's type (``Sequential``, ``BasicBlock``, ``BlockSpan(Conv2d..MaxPool2d)``).
        parameters: trainable parameter elements of the block.
        output_shape: the block's output shape without the batch dimension (``None`` if not measured).
        head: the local head (``"vector 256->10"``, ``"none"``, ``"model output"`` for the last block).
        head_parameters: trainable parameter elements of the head.
        learns_from: the depth ``j`` whose loss ``l_j`` trains the block.
        activation_bytes_per_sample: bytes the block's graph saves for backward, per sample (``None`` if
            not measured).
    """

    index: int
    module: str
    kind: str
    parameters: int
    output_shape: tuple[int, ...] | None
    head: str
    head_parameters: int
    learns_from: int
    activation_bytes_per_sample: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` (for logger configs)."""
        return asdict(self)


def format_bytes(value: float | None) -> str:
    """``1536`` -> ``"1.5 KiB"`` (powers of 1024); ``"-"`` for ``None``."""
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def format_count(value: int) -> str:
    """``12345`` -> ``"12.3 K"``, as Lightning's model summary prints parameter counts."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return str(value)


def module_path(root: nn.Module, block: nn.Module) -> str:
    """Where ``block`` lives in ``root`` (``"net.2"``), or the first and last member for a :class:`BlockSpan`."""
    names = {id(module): name for name, module in root.named_modules()}
    name = names.get(id(block))
    if name is not None:
        return name or "(root)"
    if isinstance(block, BlockSpan):
        members = [names[id(m)] for m in block if id(m) in names]
        if members:
            return members[0] if len(members) == 1 else f"{members[0]}..{members[-1]}"
    return "?"


def _describe_head(head: nn.Module | None) -> str:
    if head is None or isinstance(head, nn.Identity):
        return "none (loss on the block output)"
    if isinstance(head, LocalHead):
        spec = head.spec
        return f"{spec.kind} {spec.in_features}->{spec.out_features}"
    return type(head).__name__


def _count(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def partition_rows(
    root: nn.Module,
    blocks: Sequence[nn.Module],
    heads: Sequence[nn.Module | None],
    depths: Sequence[int],
    memory: BackpropMemory | None = None,
) -> list[PartitionRow]:
    """The summary rows of a partition.

    Args:
        root: the model the blocks belong to (for module paths).
        blocks: the blocks.
        heads: the local heads, one per block but the last.
        depths: the depth whose loss trains each block (:attr:`HorizonEngine.depths`).
        memory: a :func:`~lightning_mpc.telemetry.probes.backprop_memory` measurement, for output shapes
            and bytes per sample.
    """
    rows = []
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        head = None if last else heads[index]
        rows.append(
            PartitionRow(
                index=index,
                module=module_path(root, block),
                kind=describe(block),
                parameters=_count(block),
                output_shape=None if memory is None else tuple(memory.output_shapes[index][1:]),
                head="model output" if last else _describe_head(head),
                head_parameters=_count(head),
                learns_from=int(depths[index]),
                activation_bytes_per_sample=None if memory is None else memory.bytes_per_sample[index],
            )
        )
    return rows


def render_partition(rows: Sequence[PartitionRow], title: str, caption: str | None = None) -> Any:
    """A ``rich.table.Table`` of the rows (print it with a ``rich`` console)."""
    from rich.table import Table

    table = Table(title=title, caption=caption, header_style="bold magenta")
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("Module", overflow="fold")
    table.add_column("Type", overflow="fold")
    table.add_column("Params", justify="right", no_wrap=True)
    table.add_column("Out shape", no_wrap=True)
    table.add_column("Head", overflow="fold")
    table.add_column("Learns from", justify="right", no_wrap=True)
    table.add_column("Act./sample", justify="right", no_wrap=True)
    for row in rows:
        shape = "-" if row.output_shape is None else "[N, " + ", ".join(str(d) for d in row.output_shape) + "]"
        if row.output_shape == ():
            shape = "[N]"
        head = row.head
        table.add_row(
            str(row.index),
            row.module,
            row.kind,
            format_count(row.parameters),
            shape,
            head,
            f"l_{row.learns_from}",
            format_bytes(row.activation_bytes_per_sample),
        )
    return table
