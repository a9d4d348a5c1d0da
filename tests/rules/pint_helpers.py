"""Residual networks for the parallel-in-time tests, and an independent back-propagation reference.

The reference is plain autograd on the whole network: one forward keeping every state, one ``backward`` of
the loss, ``retain_grad`` at the slab boundaries. It uses none of the package's slab, coarse or backend code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.rules.pint import Boundaries, ResidualStep, residual_mlp


@dataclass
class PinTCase:
    """A network (as blocks), a batch and a loss."""

    name: str
    blocks: list[nn.Module]
    x: Tensor
    y: Tensor
    loss_fn: Callable[[Tensor, Any], Tensor]

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [p for block in self.blocks for p in block.parameters()]

    @property
    def buffers(self) -> list[Tensor]:
        return [b for block in self.blocks for b in block.buffers()]


def mlp_case(steps: int = 6, seed: int = 0) -> PinTCase:
    """Stem, ``steps`` tanh steps of width 8, linear classifier; float64."""
    torch.manual_seed(seed)
    net = residual_mlp(num_steps=steps, width=8, in_features=5, num_classes=3, horizon=1.5).double()
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    return PinTCase("mlp", list(net), x, y, F.cross_entropy)


def conv_case(steps: int = 6, seed: int = 0) -> PinTCase:
    """Convolutional stem, ``steps`` steps of conv + BatchNorm + tanh, pooled classifier; float64."""
    torch.manual_seed(seed)
    stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh())
    body = [
        ResidualStep(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh()), dt=0.3)
        for _ in range(steps)
    ]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    blocks = [m.double() for m in (stem, *body, head)]
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    return PinTCase("conv", blocks, x, torch.randint(0, 3, (5,)), F.cross_entropy)


def bare_case(steps: int = 6, seed: int = 0) -> PinTCase:
    """Only steps (no stem, no head), MSE to a target state; float64."""
    torch.manual_seed(seed)
    blocks: list[nn.Module] = [
        ResidualStep(nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6)), dt=0.25).double() for _ in range(steps)
    ]
    x = torch.randn(4, 6, dtype=torch.float64)
    return PinTCase("bare", blocks, x, torch.randn(4, 6, dtype=torch.float64), F.mse_loss)


CASES: dict[str, Callable[..., PinTCase]] = {"mlp": mlp_case, "conv": conv_case, "bare": bare_case}


@dataclass
class Reference:
    """Back-propagation's gradients (by parameter position), boundary values, loss and buffers after the step."""

    grads: list[Tensor]
    boundaries: Boundaries
    loss: Tensor
    buffers: list[Tensor]


def backprop_reference(case: PinTCase, slabs: int) -> Reference:
    """One back-propagation step on ``case`` (buffers move once), keeping the slab boundaries' states and co-states."""
    first = next(i for i, b in enumerate(case.blocks) if isinstance(b, ResidualStep))
    steps = sum(isinstance(b, ResidualStep) for b in case.blocks)
    base, extra = divmod(steps, slabs)
    bounds = [0]
    for s in range(slabs):
        bounds.append(bounds[-1] + base + (1 if s < extra else 0))
    for p in case.parameters:
        p.grad = None
    states: list[Tensor] = []
    x = case.x
    for index, block in enumerate(case.blocks):
        if index - first in bounds:
            states.append(x)
        x = block(x)
    if len(states) == slabs:  # no head: the last state is the output
        states.append(x)
    for state in states:
        if state.requires_grad:
            state.retain_grad()
    loss = case.loss_fn(x, case.y)
    loss.backward()
    grads = [p.grad.detach().clone() for p in case.parameters]
    costates = [s.grad.detach().clone() if s.grad is not None else torch.zeros_like(s) for s in states]
    for p in case.parameters:
        p.grad = None
    return Reference(
        grads,
        Boundaries([s.detach().clone() for s in states], costates),
        loss.detach(),
        [b.detach().clone() for b in case.buffers],
    )


def snapshot_buffers(case: PinTCase) -> list[Tensor]:
    return [b.detach().clone() for b in case.buffers]


def restore_buffers(case: PinTCase, saved: list[Tensor]) -> None:
    with torch.no_grad():
        for buffer, value in zip(case.buffers, saved):
            buffer.copy_(value)


def cosine(a: list[Tensor], b: list[Tensor]) -> float:
    u = torch.cat([t.flatten() for t in a]).double()
    v = torch.cat([t.flatten() for t in b]).double()
    return float(u @ v / (u.norm() * v.norm()))
