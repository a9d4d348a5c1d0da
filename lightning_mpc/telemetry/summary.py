"""The partition summary: one row per block, like Lightning's model summary.

Block index, where the block lives in the model, its parameters and output shape, its local head,
what trains it, and the real bytes per sample its output and graph hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from lightning_mpc.core.heads import LocalHead
from lightning_mpc.core.partition import BlockSpan, describe
from lightning_mpc.horizon.units import format_bytes

__all__ = ["PartitionRow", "format_count", "module_path", "partition_rows", "render_partition"]


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
        learns_from: what trains the block (MPC: ``"l_j"``, the loss at depth ``j``).
        activation_bytes_per_sample: real bytes the block's output and graph hold after its forward, per
            sample (``None`` if not measured).
    """

    index: int
    module: str
    kind: str
    parameters: int
    output_shape: tuple[int, ...] | None
    head: str
    head_parameters: int
    learns_from: str
    activation_bytes_per_sample: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` (for logger configs)."""
        return asdict(self)


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
    learns_from: Sequence[str],
    output_shapes: Sequence[Sequence[int]] | None = None,
    bytes_per_sample: Sequence[float] | None = None,
) -> list[PartitionRow]:
    """The summary rows of a partition.

    Args:
        root: the model the blocks belong to (for module paths).
        blocks: the blocks.
        heads: the local heads, one per block but the last (``[]`` for rules without heads).
        learns_from: what trains each block (MPC: ``"l_3"``).
        output_shapes: every block's output shape, batch first.
        bytes_per_sample: every block's real bytes (output and graph) per sample.
    """
    rows = []
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        head = None if last or index >= len(heads) else heads[index]
        rows.append(
            PartitionRow(
                index=index,
                module=module_path(root, block),
                kind=describe(block),
                parameters=_count(block),
                output_shape=None if output_shapes is None else tuple(output_shapes[index][1:]),
                head="model output" if last else ("-" if index >= len(heads) else _describe_head(head)),
                head_parameters=_count(head),
                learns_from=learns_from[index] if index < len(learns_from) else "-",
                activation_bytes_per_sample=None if bytes_per_sample is None else bytes_per_sample[index],
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
            row.learns_from,
            format_bytes(row.activation_bytes_per_sample, binary=True),
        )
    return table
