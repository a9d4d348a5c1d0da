"""Memory-balanced cuts: torchgpipe's ``balance_by_size`` idea applied to horizon training.

At ``h = 1`` the engine holds one block's window at a time: the block's input (handed over without a
graph), the tensors its forward allocated and still references (its output and what autograd saved), the
gradient arriving at its output and the backward's temporaries. A network whose activations are uneven
(the ResNet stem holds over a third of ResNet-18's on small images) then peaks in its largest block, and
only finer cuts where activations are large bring ``h = 1`` down. This module measures each unit's real
bytes with the allocator (:class:`~lightning_mpc.core.realmem.RealMemoryMeter`), models a block's window
from them (:func:`window_bytes`) and chooses the contiguous cut whose largest window is smallest (dynamic
programming, ties broken by the smaller sum), each block holding at least one unit that learns.

Measure at the training batch size: activations scale with the batch, parameter-gradient buffers do not,
and which of them dominates decides where the cuts go.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_mpc.core.blocks import has_trainable_parameters
from lightning_mpc.core.isolation import forked_rng, isolated_gradients
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.realmem import RealMemoryMeter

__all__ = ["UnitMemory", "balance_by_memory", "best_cuts", "measure_units", "window_bytes"]


@dataclass(frozen=True)
class UnitMemory:
    """Real bytes of one unit's forward and backward, measured with the allocator, in the two roles it can play.

    A unit that starts a block at ``h = 1`` gets its input without a graph (the engine differentiates no
    block input there): it saves only what its parameters' gradients need, and its backward computes no
    input gradient. A unit inside a block gets an input that is part of the block's graph.

    Attributes:
        input_bytes: the unit's input (held while a block that starts here runs).
        output_bytes: the unit's output (the gradient arriving there has the same size).
        start_held_bytes: allocated by its forward and still referenced after it, as a block's first unit.
        start_backward_bytes: the peak of its backward above what it started with, as a block's first unit.
        inner_held_bytes: the same as ``start_held_bytes`` inside a block.
        inner_backward_bytes: the same as ``start_backward_bytes`` inside a block (with the input gradient).
        trainable: whether the unit has parameters that learn (every block needs one).
    """

    input_bytes: int
    output_bytes: int
    start_held_bytes: int
    start_backward_bytes: int
    inner_held_bytes: int
    inner_backward_bytes: int
    trainable: bool


def _nbytes(value: object) -> int:
    return value.numel() * value.element_size() if isinstance(value, Tensor) else 0


def _measure(unit: nn.Module, x: Tensor, inner: bool, device: torch.device) -> tuple[Tensor, int, int]:
    """Run ``unit`` on ``x`` as a block's first unit or inside a block: (output, held bytes, backward peak)."""
    parameters = [p for p in unit.parameters() if p.requires_grad]
    leaf = x.detach().requires_grad_(inner and x.is_floating_point())
    # Inside a block the input is an intermediate tensor of the graph (in-place ops on it are allowed).
    unit_input = leaf.clone() if leaf.requires_grad else leaf
    with RealMemoryMeter(device) as forward:
        output = unit(unit_input)
    if not isinstance(output, Tensor):
        raise TypeError(
            f"{type(unit).__name__} returned {type(output).__name__}, not a tensor. "
            "HINT: every unit of a partition maps one tensor to one tensor."
        )
    inputs = parameters + ([leaf] if leaf.requires_grad else [])
    backward_peak = 0
    if output.requires_grad and inputs:
        grad = torch.ones_like(output)
        with RealMemoryMeter(device) as backward:
            torch.autograd.backward(output, grad, inputs=inputs)
        backward_peak = backward.peak_bytes
    assert forward.result is not None
    return output.detach(), max(forward.result.end_bytes, 0), backward_peak


def measure_units(units: Sequence[nn.Module], x: Tensor) -> list[UnitMemory]:
    """Measure every unit's real bytes on ``x`` (block 0's input), running them in order.

    The units run in their current mode (training mode for a training partition) with gradients enabled,
    each twice (as a block's first unit and inside a block). Buffers (BatchNorm statistics), ``.grad`` and
    the random state are put back afterwards.

    Raises:
        TypeError: if a unit does not map a tensor to a tensor.
    """
    device = x.device if x.device.type == "cuda" else torch.device("cpu")
    parameters = [p for unit in units for p in unit.parameters() if p.requires_grad]
    memories: list[UnitMemory] = []
    with preserved_buffers(units), isolated_gradients(parameters), forked_rng([device]), torch.enable_grad():
        current = x.detach()
        for unit in units:
            # Copies: a unit that works in place must not change the input of the other run.
            _, start_held, start_backward = _measure(unit, current.clone(), inner=False, device=device)
            output, inner_held, inner_backward = _measure(unit, current.clone(), inner=True, device=device)
            memories.append(
                UnitMemory(
                    input_bytes=_nbytes(current),
                    output_bytes=_nbytes(output),
                    start_held_bytes=start_held,
                    start_backward_bytes=start_backward,
                    inner_held_bytes=inner_held,
                    inner_backward_bytes=inner_backward,
                    trainable=has_trainable_parameters(unit),
                )
            )
            current = output
    return memories


def window_bytes(memories: Sequence[UnitMemory], start: int, stop: int) -> int:
    """Modelled real peak of one block made of units ``start..stop-1`` at ``h = 1``.

    Its input, what its units' forwards hold (the units up to the first one that learns run without a
    graph, as the block's start does), and the largest output-gradient-plus-backward of one unit on top.
    """
    block = memories[start:stop]
    first_learner = next((i for i, m in enumerate(block) if m.trainable), len(block) - 1)
    held = 0
    backward = 0
    for offset, memory in enumerate(block):
        starts = offset <= first_learner
        held += memory.start_held_bytes if starts else memory.inner_held_bytes
        unit_backward = memory.start_backward_bytes if starts else memory.inner_backward_bytes
        backward = max(backward, memory.output_bytes + unit_backward)
    return block[0].input_bytes + held + backward


def best_cuts(memories: Sequence[UnitMemory], num_blocks: int) -> list[int]:
    """The cut positions of the contiguous partition into ``num_blocks`` blocks with the smallest largest window.

    Every block holds at least one trainable unit. Returns the ``num_blocks + 1`` boundaries
    ``0 = b_0 < b_1 < ... < b_K = n``; block ``k`` is units ``b_k .. b_{k+1} - 1``.

    Raises:
        ValueError: if ``num_blocks`` is below 1 or above the number of trainable units.
    """
    n = len(memories)
    learners = sum(m.trainable for m in memories)
    if not 1 <= num_blocks <= max(learners, 1):
        raise ValueError(
            f"Cannot cut {n} units, {learners} of which learn, into num_blocks={num_blocks} blocks that each learn. "
            f"HINT: pass 1 <= num_blocks <= {max(learners, 1)}."
        )
    # trainable[i] = number of trainable units among the first i
    trainable = [0]
    for memory in memories:
        trainable.append(trainable[-1] + int(memory.trainable))
    cost = [[0] * (n + 1) for _ in range(n + 1)]
    for start in range(n):
        for stop in range(start + 1, n + 1):
            cost[start][stop] = window_bytes(memories, start, stop)

    def learns(start: int, stop: int) -> bool:
        return learners == 0 or trainable[stop] > trainable[start]

    infinity = (math.inf, math.inf)
    # best[k][i]: (largest window, sum of windows) of the first i units cut into k blocks
    best = [[infinity] * (n + 1) for _ in range(num_blocks + 1)]
    choice = [[-1] * (n + 1) for _ in range(num_blocks + 1)]
    best[0][0] = (0, 0)
    for k in range(1, num_blocks + 1):
        for stop in range(k, n + 1):
            for start in range(k - 1, stop):
                previous = best[k - 1][start]
                if previous == infinity or not learns(start, stop):
                    continue
                window = cost[start][stop]
                candidate = (max(previous[0], window), previous[1] + window)
                if candidate < best[k][stop]:
                    best[k][stop] = candidate
                    choice[k][stop] = start
    if best[num_blocks][n] == infinity:  # pragma: no cover - excluded by the check above
        raise ValueError(f"No cut of {n} units into {num_blocks} learning blocks exists.")
    bounds = [n]
    for k in range(num_blocks, 0, -1):
        bounds.append(choice[k][bounds[-1]])
    return bounds[::-1]


def balance_by_memory(units: Sequence[nn.Module], x: Tensor, num_blocks: int) -> list[list[nn.Module]]:
    """Group consecutive ``units`` into ``num_blocks`` blocks whose largest real ``h = 1`` window is smallest.

    Args:
        units: the model's finest hookable units, in forward order.
        x: block 0's input at the training batch size.
        num_blocks: how many blocks to make.
    """
    bounds = best_cuts(measure_units(units, x), num_blocks)
    return [list(units[start:stop]) for start, stop in zip(bounds, bounds[1:])]
