"""Where the ODE steps of a network are, and how they are cut into slabs.

A network trained parallel in time is ``stem -> ResidualStep x N -> head``: the blocks before the first
:class:`~lightning_mpc.rules.pint.modules.ResidualStep` form the stem, the steps must follow each other
without any other block between them, and the blocks after the last step form the head (classifier). The
``N`` steps are cut into ``K`` contiguous slabs of as equal a number of steps as possible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from lightning_mpc.core.partition import describe
from lightning_mpc.rules.pint.modules import ResidualStep

__all__ = [
    "ResidualNetwork",
    "check_deterministic",
    "positive_int",
    "slab_ranges",
    "split_network",
    "validate_iterations",
    "validate_slabs",
]


@dataclass(frozen=True)
class ResidualNetwork:
    """A network's blocks split into stem, ODE steps and head.

    Attributes:
        stem: the blocks before the first step (may be empty).
        steps: the ODE steps, in order.
        head: the blocks after the last step (may be empty: the last state is then the prediction).
        first: the index of the first step among all blocks.
    """

    stem: list[nn.Module]
    steps: list[ResidualStep]
    head: list[nn.Module]
    first: int

    @property
    def last(self) -> int:
        """The index of the last step among all blocks."""
        return self.first + len(self.steps) - 1


def split_network(blocks: Sequence[nn.Module]) -> ResidualNetwork:
    """Split ``blocks`` into stem, residual steps and head.

    Raises:
        ValueError: if no block is a :class:`ResidualStep`, or a block between two steps is not one.
    """
    indices = [i for i, block in enumerate(blocks) if isinstance(block, ResidualStep)]
    if not indices:
        names = ", ".join(f"{i}: {describe(b)}" for i, b in enumerate(blocks)) or "none"
        raise ValueError(
            f"Parallel-in-time training needs residual blocks as ODE steps, but none of the blocks is a ResidualStep "
            f"(blocks {names}). HINT: write each residual block x + dt * f(x) as "
            "lightning_mpc.rules.pint.ResidualStep(f, dt), or build the network with residual_mlp()."
        )
    first, last = indices[0], indices[-1]
    for index in range(first, last + 1):
        if not isinstance(blocks[index], ResidualStep):
            raise ValueError(
                f"Block {index} ({describe(blocks[index])}) sits between the residual steps {first} and {last} but is "
                "not a ResidualStep: the steps of an ODE must follow each other. HINT: move it before the first or "
                "after the last step, or write it as ResidualStep(f, dt) with f keeping the width."
            )
    steps: list[ResidualStep] = [blocks[i] for i in indices]  # type: ignore[misc]
    return ResidualNetwork(stem=list(blocks[:first]), steps=steps, head=list(blocks[last + 1 :]), first=first)


def positive_int(name: str, value: object, hint: str) -> int:
    """``value`` if it is an integer ``>= 1`` (not a bool).

    Raises:
        ValueError: otherwise, naming ``name`` and ending with ``HINT: hint``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}. HINT: {hint}")
    return value


def validate_slabs(slabs: int, num_steps: int | None = None) -> int:
    """``slabs`` if it is an integer ``K >= 1`` (and at most ``num_steps`` when given).

    Raises:
        ValueError: otherwise.
    """
    positive_int("slabs", slabs, "pass the number of slabs K, e.g. 2.")
    if num_steps is not None and slabs > num_steps:
        raise ValueError(
            f"Cannot cut {num_steps} residual steps into {slabs} slabs: every slab needs at least one step. "
            f"HINT: use at most {num_steps} slabs (devices), or a deeper network."
        )
    return slabs


def validate_iterations(iterations: int) -> int:
    """``iterations`` if it is an integer ``>= 1``.

    Raises:
        ValueError: otherwise.
    """
    return positive_int(
        "iterations", iterations, "1 predicts and corrects once; 2K - 1 corrections give back-propagation's gradients."
    )


def slab_ranges(num_steps: int, slabs: int) -> list[range]:
    """The steps of every slab: ``slabs`` contiguous ranges whose lengths differ by at most one.

    Raises:
        ValueError: for fewer steps than slabs.
    """
    validate_slabs(slabs, num_steps)
    base, extra = divmod(num_steps, slabs)
    ranges, start = [], 0
    for s in range(slabs):
        stop = start + base + (1 if s < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


def check_deterministic(steps: Sequence[nn.Module]) -> None:
    """Refuse dropout inside the residual steps: slabs run their steps more than once and on several processes.

    Raises:
        ValueError: naming the step that holds a dropout module with ``p > 0``.
    """
    for index, step in enumerate(steps):
        for name, module in step.named_modules():
            if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
                raise ValueError(
                    f"Residual step {index} holds {type(module).__name__}(p={module.p}) at {name or 'its root'}: the "
                    "slabs run their steps once per iteration and on several processes, so random masks would differ "
                    "between the passes. HINT: set p=0 inside the residual steps (dropout in the stem or head is fine)."
                )
