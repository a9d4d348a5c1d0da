"""Alignment and memory probes: what each horizon's update looks like on one batch, measured.

For one batch the probe runs :func:`~lightning_mpc.horizon_backward` once per horizon (back-propagation
is ``h = T``), each under a :class:`~lightning_mpc.RealMemoryMeter` (allocator bytes: what the step really
holds, its parameters' gradients included, as in a Lightning step that starts after ``zero_grad``), and
compares the block gradients with back-propagation's. The model is left as it was: the parameters' ``.grad`` are saved
and restored, buffers (BatchNorm statistics) are restored after every run, and every run starts from
the same random state, so dropout draws the same masks for the horizon and for back-propagation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mpc.core.alignment import gradient_alignment
from lightning_mpc.core.engine import horizon_backward, iter_parameters
from lightning_mpc.core.isolation import RandomState, isolated_gradients, module_devices
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.realmem import RealMemoryMeter
from lightning_mpc.core.schedule import Mode

__all__ = ["BatchProbe", "isolated_gradients", "probe_batch"]


@dataclass(frozen=True)
class BatchProbe:
    """What one batch measured.

    Attributes:
        alignment: ``cos^2`` between the horizon's block gradient and back-propagation's, per horizon.
        memory: the real peak (allocator bytes) of the horizon's step, per horizon.
        backprop_norm: the norm of back-propagation's block gradient (``0`` means the batch says
            nothing about directions and its alignments are ``nan``).
    """

    alignment: dict[int, float]
    memory: dict[int, int]
    backprop_norm: float


def probe_batch(
    blocks: Sequence[nn.Module],
    heads: Sequence[nn.Module | None],
    x: Any,
    target: Any,
    loss_fn: Callable[[Tensor, Any], Tensor],
    horizons: Iterable[int],
    mode: Mode = "sliding",
) -> BatchProbe:
    """Measure ``cos^2`` to back-propagation and the real peak of each horizon's step on one batch.

    Args:
        blocks: the blocks ``0..T-1``.
        heads: ``T - 1`` local heads (``None`` or ``nn.Identity`` for none).
        x: the input of block 0.
        target: the second argument of ``loss_fn``.
        loss_fn: ``loss_fn(prediction, target) -> scalar``, for the local losses and the final one.
        horizons: the horizons to measure, each in ``1..T``; ``T`` (back-propagation) is always measured.
        mode: the window rule, ``"sliding"`` (the paper's) or ``"block"``.

    Returns:
        The batch's alignments and peaks, keyed by horizon.
    """
    blocks = list(blocks)
    heads = list(heads)
    num_blocks = len(blocks)
    params = list(iter_parameters([*blocks, *heads]))
    block_params = list(iter_parameters(blocks))
    if not block_params:
        raise ValueError(
            "The blocks have no trainable parameter, so no gradient can be aligned. "
            "HINT: unfreeze the blocks (requires_grad=True) before selecting a horizon."
        )
    modules: list[nn.Module | None] = [*blocks, *heads]
    order = sorted({min(h, num_blocks) for h in horizons} - {num_blocks})
    random_state = RandomState.capture(module_devices(modules))

    device = x.device if isinstance(x, Tensor) else next(iter(module_devices(modules)), torch.device("cpu"))

    def run(horizon: int) -> tuple[list[Tensor | None], int]:
        meter = RealMemoryMeter(device)
        with isolated_gradients(params), preserved_buffers(modules), random_state.replay(), torch.enable_grad():
            with meter:
                horizon_backward(blocks, heads, x, target, loss_fn, horizon, mode)
            grads = [None if p.grad is None else p.grad.detach() for p in block_params]
        return grads, meter.peak_bytes

    def cos_squared(update: list[Tensor | None], reference: list[Tensor | None]) -> float:
        return min(gradient_alignment([update], [reference]).total ** 2, 1.0)

    reference, backprop_bytes = run(num_blocks)
    alignment = {num_blocks: cos_squared(reference, reference)}
    memory = {num_blocks: backprop_bytes}
    for horizon in order:
        grads, peak = run(horizon)
        alignment[horizon] = cos_squared(grads, reference)
        memory[horizon] = peak
    norm = float(torch.cat([g.double().flatten() for g in reference if g is not None] or [torch.zeros(1)]).norm())
    return BatchProbe(dict(sorted(alignment.items())), dict(sorted(memory.items())), norm)
