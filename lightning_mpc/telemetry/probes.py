"""Measurements that need extra computation: gradient alignment, back-propagation's memory, gradient norms.

Every probe leaves the model as it found it: parameters' ``.grad`` are saved and restored (or never
written: back-propagation's gradient is taken with :func:`torch.autograd.grad`), buffers such as
BatchNorm running statistics are restored (:func:`~lightning_mpc.core.memory.preserved_buffers`), and
the random state is forked, so dropout masks drawn by a probe do not shift the training run's.

The alignment of a block is the cosine between the update the horizon rule gives its parameters and
the true (back-propagation) gradient of the final loss on the same batch, with the same parameters and
the same random draws: the quantity Ren & Li's analysis bounds (``1 - cos^2 = O((1 - h/T)^3)`` in
deep linear networks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_mpc.core.alignment import Alignment, gradient_alignment
from lightning_mpc.core.engine import horizon_backward
from lightning_mpc.core.hooks import first_block_input
from lightning_mpc.core.isolation import RandomState, forked_rng, isolated_gradients
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.partition import hook_points
from lightning_mpc.core.schedule import Mode

__all__ = [
    "Alignment",
    "BlockInputCapture",
    "RandomState",
    "backprop_block_gradients",
    "backprop_peak_bytes",
    "block_grad_norms",
    "block_parameters",
    "first_block_input",
    "gradient_alignment",
    "measure_alignment",
    "step_update",
]

def block_parameters(blocks: Sequence[nn.Module]) -> list[list[nn.Parameter]]:
    """The trainable parameters of every block, in ``parameters()`` order."""
    return [[p for p in block.parameters() if p.requires_grad] for block in blocks]


def _device_of(modules: Iterable[nn.Module | None], x: Any) -> torch.device | None:
    if isinstance(x, Tensor):
        return x.device
    for module in modules:
        if module is None:
            continue
        for tensor in (*module.parameters(), *module.buffers()):
            return tensor.device
    return None


# --------------------------------------------------------------------------- block input
class BlockInputCapture:
    """A forward pre-hook on block 0's entry module that records the block's input when armed.

    The hook keeps the input detached (it shares the input's storage; no graph) and, if asked, the
    random state at that moment, so that a probe can replay the blocks with the same dropout masks.

    Args:
        blocks: the blocks; the hook goes on the module whose input is block 0's
            (:func:`~lightning_mpc.core.partition.hook_points`).
    """

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        entry, _ = hook_points(blocks[0])
        self.input: Tensor | None = None
        self.random_state: RandomState | None = None
        self._armed = False
        self._with_rng = False
        self._handle: RemovableHandle | None = entry.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any) -> None:
        if not self._armed:
            return
        self._armed = False
        first = args[0] if isinstance(args, tuple) and args else args
        if isinstance(first, Tensor):
            self.input = first.detach()
            if self._with_rng:
                self.random_state = RandomState.capture(first.device)

    def arm(self, random_state: bool = False) -> None:
        """Record the input of the next forward of block 0 (and the random state if ``random_state``)."""
        self.clear()
        self._armed = True
        self._with_rng = random_state

    def clear(self) -> None:
        """Forget what was recorded and disarm."""
        self.input = None
        self.random_state = None
        self._armed = False

    def remove(self) -> None:
        """Remove the hook from the module."""
        self.clear()
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


# --------------------------------------------------------------------------- alignment
def _run_blocks_replaying_heads(
    blocks: Sequence[nn.Module], heads: Sequence[nn.Module | None], x: Tensor
) -> Tensor:
    """The blocks' forward with grad, heads run without grad in between so random draws line up with MPC's."""
    out = x
    for index, block in enumerate(blocks):
        out = block(out)
        head = heads[index] if index < len(heads) else None
        if head is not None and isinstance(out, Tensor):
            with torch.no_grad():
                head(out.detach())
    return out


def backprop_block_gradients(
    blocks: Sequence[nn.Module],
    heads: Sequence[nn.Module | None],
    x: Tensor,
    *,
    grad_output: Tensor | None = None,
    loss: Callable[[Tensor], Tensor] | None = None,
    random_state: RandomState | None = None,
    forward_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> list[list[Tensor | None]]:
    """Back-propagation's gradient of every block's trainable parameters, without touching ``.grad``.

    The blocks run on ``x`` (block 0's input) with gradients enabled; the heads run in between without
    gradients, so that a stochastic head draws random numbers in the same order as under the horizon
    engine. Buffers are restored afterwards and the random state is forked (``random_state`` is the state
    to start from, e.g. the one recorded when the training step's block 0 started).

    Args:
        blocks: the blocks.
        heads: the local heads (``[]`` to skip the replay).
        x: block 0's input.
        grad_output: the final loss's gradient at the last block's output (as the training step computed
            it, with its own loss and scaling); exclusive with ``loss``.
        loss: maps the last block's output to the final loss; exclusive with ``grad_output``.
        random_state: the random state to replay the forward from.
        forward_context: a context for the forward (e.g. the precision plugin's autocast).

    Returns:
        One list per block, in the order of :func:`block_parameters` (``None`` where a parameter gets no
        gradient).
    """
    if (grad_output is None) == (loss is None):
        raise ValueError("Pass exactly one of grad_output and loss.")
    params = block_parameters(blocks)
    flat = [p for group in params for p in group]
    device = _device_of(blocks, x)
    rng = random_state.replay() if random_state is not None else forked_rng([device])
    context = forward_context() if forward_context is not None else contextlib.nullcontext()
    with preserved_buffers([*blocks, *heads]), rng, torch.enable_grad():
        with context:
            out = _run_blocks_replaying_heads(blocks, heads, x.detach())
            target = out if loss is None else loss(out)
        if not flat or not target.requires_grad:
            grads: Sequence[Tensor | None] = [None] * len(flat)
        else:
            grads = torch.autograd.grad(
                target, flat, grad_outputs=grad_output if loss is None else None, allow_unused=True
            )
    result: list[list[Tensor | None]] = []
    position = 0
    for group in params:
        result.append(list(grads[position : position + len(group)]))
        position += len(group)
    return result


def measure_alignment(
    blocks: Sequence[nn.Module],
    heads: Sequence[nn.Module | None],
    x: Tensor,
    target: Any,
    loss_fn: Callable[[Tensor, Any], Tensor],
    horizon: int,
    mode: Mode = "sliding",
) -> Alignment:
    """Alignment of the horizon rule with back-propagation on one batch, leaving the model untouched.

    Runs :func:`~lightning_mpc.horizon_backward` and back-propagation from the same random state, on the
    same parameters, and compares the block gradients. ``.grad``, buffers and the random state are as
    before the call. Costs one horizon step and one back-propagation step.

    Args:
        blocks: the blocks.
        heads: the local heads.
        x: block 0's input.
        target: the second argument of ``loss_fn``.
        loss_fn: ``loss_fn(prediction, target) -> scalar``, for the heads and the final output alike.
        horizon: ``h``.
        mode: ``"sliding"`` or ``"block"``.
    """
    params = block_parameters(blocks)
    every = [p for group in params for p in group] + [p for h in heads if h is not None for p in h.parameters()]
    device = _device_of(blocks, x)
    start = RandomState.capture(device)
    with isolated_gradients(every), preserved_buffers([*blocks, *heads]), start.replay():
        horizon_backward(blocks, heads, x, target, loss_fn, horizon, mode)
        update = [[p.grad for p in group] for group in params]
    reference = backprop_block_gradients(
        blocks, heads, x, loss=lambda out: loss_fn(out, target), random_state=start
    )
    return gradient_alignment(update, reference, params)


# --------------------------------------------------------------------------- gradients
def block_grad_norms(blocks: Sequence[nn.Module]) -> list[Tensor | None]:
    """The 2-norm of each block's parameter gradients (a 0-d tensor on the gradients' device).

    ``None`` for a block with no gradient. Nothing is synchronised with the device.
    """
    norms: list[Tensor | None] = []
    for block in blocks:
        grads = [p.grad for p in block.parameters() if p.grad is not None]
        if not grads:
            norms.append(None)
            continue
        device = grads[0].device
        parts = torch.stack([_norm(g.detach()).to(device) for g in grads])
        norms.append(torch.linalg.vector_norm(parts))
    return norms


def _norm(grad: Tensor) -> Tensor:
    """The 2-norm in at least single precision (half-precision norms overflow), as a float32 scalar."""
    if grad.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(grad, dtype=torch.float32)
    return torch.linalg.vector_norm(grad).float()


# --------------------------------------------------------------------------- for the telemetry callback
def step_update(
    params: Sequence[Sequence[nn.Parameter]], before: Sequence[Sequence[Tensor | None]] | None = None
) -> list[list[Tensor | None]]:
    """The gradient a step wrote into each block's parameters: ``.grad`` minus what it held before the step."""
    update: list[list[Tensor | None]] = []
    for index, group in enumerate(params):
        row: list[Tensor | None] = []
        for position, param in enumerate(group):
            previous = None if before is None else before[index][position]
            grad = None if param.grad is None else param.grad.detach()
            row.append(grad if previous is None or grad is None else grad - previous)
        update.append(row)
    return update


def backprop_peak_bytes(
    blocks: Sequence[nn.Module],
    x: Tensor,
    target: Any,
    loss_fn: Callable[[Tensor, Any], Tensor],
    *,
    allocate_gradients: bool = False,
) -> int:
    """What back-propagation would really hold on this batch (allocator bytes), measured one block at a time.

    Uses the window model of :func:`~lightning_mpc.core.memory.profile_real_memory` at ``h = T``, so it needs
    about one block's memory, not the network's. Gradients, buffers and the random state are left alone.

    Args:
        blocks: the blocks.
        x: block 0's input.
        target: the second argument of ``loss_fn``.
        loss_fn: the loss of the last block's output.
        allocate_gradients: the step starts without ``.grad`` (as a Lightning step after ``zero_grad``).
    """
    from lightning_mpc.core.memory import profile_real_memory

    profile = profile_real_memory(blocks, [], x, target, loss_fn, local_losses=False)
    return profile.predict_peak(len(blocks), allocate_gradients=allocate_gradients)
