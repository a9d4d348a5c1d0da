"""``nn.Sequential``: its children, in order."""

from __future__ import annotations

from torch import nn

from lightning_mpc.core.partitioners.registry import NaturalBlocks, register_partitioner

__all__ = ["cut_sequential"]


@register_partitioner(nn.Sequential)
def cut_sequential(model: nn.Sequential) -> NaturalBlocks:
    """Its children, in order."""
    blocks = list(model.children())
    if not blocks:
        raise ValueError("Cannot partition an empty nn.Sequential. HINT: give the Sequential at least one module.")
    return blocks
