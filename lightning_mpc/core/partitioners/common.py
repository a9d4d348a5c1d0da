"""Helpers the built-in partitioners share."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from lightning_mpc.core.blocks import BlockSpan

__all__ = ["channels_last", "members", "stage_blocks"]


def members(module: nn.Module) -> list[nn.Module]:
    """The children of an ``nn.Sequential`` (each called in order by its forward), or the module itself."""
    return list(module) if isinstance(module, nn.Sequential) else [module]


def stage_blocks(stages: Iterable[nn.Module]) -> list[nn.Module]:
    """The blocks of consecutive stages, each stage an ``nn.Sequential`` of blocks."""
    return [block for stage in stages for block in members(stage)]


def channels_last(unit: nn.Module) -> BlockSpan:
    """``unit`` as a span whose output is ``(N, H, W, C)``, so that its automatic head pools the right dimensions."""
    return BlockSpan(unit, layout="channels_last")
