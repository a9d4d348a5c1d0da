"""The training steps a benchmark compares: back-propagation, activation checkpointing, MPC, any rule.

Each step is a forward and every backward of one batch (no optimizer): the part whose memory and time the
methods change. Gradients are added to ``.grad``; :func:`lightning_mpc.bench.memory.prepare_gradients`
zeroes them in place between steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_mpc.bench.workloads import Workload
from lightning_mpc.core.engine import horizon_backward
from lightning_mpc.core.heads import block_output_shapes
from lightning_mpc.core.hooks import BlockHooks
from lightning_mpc.core.partition import run_blocks
from lightning_mpc.core.schedule import Mode
from lightning_mpc.rules.base import CreditRule, RuleSetup, RuleStep

__all__ = [
    "Step",
    "StepConfig",
    "backprop_step",
    "checkpoint_step",
    "checkpointed_forward",
    "module_step",
    "mpc_step",
    "rule_step",
    "sqrt_segment",
    "standard_configs",
]

Step = Callable[[], None]
"""One forward and every backward of one batch."""


def checkpointed_forward(blocks: Sequence[nn.Module], x: Tensor, segment: int = 1) -> Tensor:
    """Run ``blocks`` in consecutive segments of ``segment`` blocks, each under activation checkpointing.

    ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` (PyTorch's recommended variant): only
    each segment's input is kept during the forward, and the segment is recomputed in the backward. The
    gradients are exactly back-propagation's.

    Raises:
        ValueError: for a segment below 1.
    """
    if segment < 1:
        raise ValueError(
            f"checkpointed_forward: segment={segment} must be >= 1. HINT: pass 1 to checkpoint every block."
        )
    for start in range(0, len(blocks), segment):
        part = blocks[start : start + segment]
        x = checkpoint(run_blocks, part, x, use_reentrant=False)
    return x


def sqrt_segment(num_blocks: int) -> int:
    """The ``sqrt(T)``-style segment length: about ``sqrt(T)`` blocks, at least 2."""
    return max(2, round(math.sqrt(num_blocks)))


def backprop_step(w: Workload) -> Step:
    """Forward through every block, the final loss, one backward."""

    def step() -> None:
        w.loss_fn(run_blocks(w.blocks, w.x), w.y).backward()

    return step


def checkpoint_step(w: Workload, segment: int = 1) -> Step:
    """Back-propagation with segments of ``segment`` blocks checkpointed (:func:`checkpointed_forward`)."""

    def step() -> None:
        w.loss_fn(checkpointed_forward(w.blocks, w.x, segment), w.y).backward()

    return step


def mpc_step(w: Workload, horizon: int, mode: Mode = "sliding") -> Step:
    """One :func:`~lightning_mpc.horizon_backward` call: interleaved forward and window backwards."""

    def step() -> None:
        horizon_backward(w.blocks, list(w.heads), w.x, w.y, w.loss_fn, horizon, mode)

    return step


def module_step(model: nn.Module, x: Tensor, y: Tensor) -> Step:
    """Back-propagation through a whole model: its forward, cross-entropy on ``y``, one backward."""

    def step() -> None:
        F.cross_entropy(model(x), y).backward()

    return step


def rule_step(
    rule: CreditRule, model: nn.Module, blocks: Sequence[nn.Module], x: Tensor, y: Tensor, block_input: Tensor | None = None
) -> Step:
    """One training step of ``rule`` as its strategy runs it: the rule's listener on the blocks during the model's
    forward, cross-entropy on ``y`` back-propagated, then the rule's ``after_backward``.

    The rule is set up on a dry run of the blocks (on the CPU, in float32) and its modules are registered on
    ``model`` as the strategy registers them, so that ``model.parameters()`` includes them.

    Args:
        rule: the rule, not set up yet.
        model: the model whose forward runs ``blocks``.
        blocks: its blocks, in order.
        x: the batch input (what ``model`` takes).
        y: the classes.
        block_input: block 0's input when it is not ``x`` (an MLP flattening its images first).
    """
    first = x if block_input is None else block_input
    shapes = block_output_shapes(blocks, first[:2])
    rule.setup(RuleSetup(model, list(blocks), shapes, first[:2], torch.device("cpu"), torch.float32))
    for attribute, module in rule.auxiliary_modules().items():
        setattr(model, attribute, module)
    hooks = BlockHooks(blocks)

    def step() -> None:
        listener = rule.begin_step(RuleStep((x, y), lambda p: F.cross_entropy(p, y), None, lambda: first))
        hooks.attach(listener)
        loss = F.cross_entropy(model(x), y)
        hooks.attach(None)
        rule.end_forward(loss)
        loss.backward()
        rule.after_backward()

    return step


@dataclass
class StepConfig:
    """One configuration of a benchmark table.

    Attributes:
        label: the row's name.
        kind: ``"bp"``, ``"checkpoint"`` or ``"mpc"``.
        step: runs one step.
        horizon: the MPC horizon (``None`` otherwise).
        mode: the MPC window mode (``None`` otherwise).
        segment: blocks per checkpointed segment (``None`` otherwise).
    """

    label: str
    kind: str
    step: Step
    horizon: int | None = None
    mode: Mode | None = None
    segment: int | None = None


def standard_configs(
    w: Workload,
    horizons: Sequence[int] = (1, 2, 4),
    modes: Sequence[Mode] = ("sliding", "block"),
    *,
    sqrt_checkpointing: bool = True,
) -> list[StepConfig]:
    """Back-propagation, checkpointing every block (and every ``sqrt(T)``-style segment), then MPC.

    Args:
        w: the workload.
        horizons: MPC horizons.
        modes: MPC window modes, each with every horizon.
        sqrt_checkpointing: add checkpointing in segments of :func:`sqrt_segment` blocks.
    """
    rows = [
        StepConfig("back-propagation", "bp", backprop_step(w)),
        StepConfig("checkpoint every block", "checkpoint", checkpoint_step(w, 1), segment=1),
    ]
    segment = sqrt_segment(w.num_blocks)
    if sqrt_checkpointing and segment < w.num_blocks:
        rows.append(
            StepConfig(f"checkpoint every {segment} blocks", "checkpoint", checkpoint_step(w, segment), segment=segment)
        )
    for mode in modes:
        for h in horizons:
            rows.append(StepConfig(f"MPC {mode} h={h}", "mpc", mpc_step(w, h, mode), horizon=h, mode=mode))
    return rows
