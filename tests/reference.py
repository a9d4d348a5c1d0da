"""An independent reference for the horizon rule: one full graph and ``autograd.grad`` per block.

Deliberately naive and written without the package's schedule code: it holds every activation and
differentiates each block's own window loss through the whole connected graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def reference_depth(block: int, num_blocks: int, horizon: int, mode: str) -> int:
    """Depth of the loss that trains ``block``, from the definitions in design.md section 2."""
    if mode == "sliding":
        return min(block + horizon, num_blocks)
    window_start = 0
    while window_start + horizon <= block:
        window_start += horizon
    return min(window_start + horizon, num_blocks)


def reference_gradients(
    blocks: Sequence[nn.Module],
    heads: Sequence[nn.Module | None],
    x: Tensor,
    target: Any,
    loss_fn: Callable[[Tensor, Any], Tensor],
    horizon: int,
    mode: str,
) -> tuple[dict[int, Tensor | None], Tensor]:
    """Gradient of every block and head parameter (keyed by ``id``) under the horizon rule, and the final loss."""
    num_blocks = len(blocks)
    states = [x]
    for block in blocks:
        states.append(block(states[-1]))
    losses = {}
    for depth in range(1, num_blocks):
        head = heads[depth - 1]
        losses[depth] = loss_fn(states[depth] if head is None else head(states[depth]), target)
    losses[num_blocks] = loss_fn(states[num_blocks], target)

    grads: dict[int, Tensor | None] = {}
    for index, block in enumerate(blocks):
        params = [p for p in block.parameters() if p.requires_grad]
        if not params:
            continue
        depth = reference_depth(index, num_blocks, horizon, mode)
        values = torch.autograd.grad(losses[depth], params, retain_graph=True, allow_unused=True)
        grads.update({id(p): g for p, g in zip(params, values)})
    for index, head in enumerate(heads):
        params = [] if head is None else [p for p in head.parameters() if p.requires_grad]
        if not params:
            continue
        # A head learns from its own loss only, with its input cut from the blocks below.
        detached_loss = loss_fn(head(states[index + 1].detach()), target)
        values = torch.autograd.grad(detached_loss, params, allow_unused=True)
        grads.update({id(p): g for p, g in zip(params, values)})
    return grads, losses[num_blocks].detach()
