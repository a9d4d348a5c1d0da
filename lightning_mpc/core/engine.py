"""The interleaved forward/backward schedule behind horizon-truncated training.

The engine receives block outputs one at a time, in order. After block ``k`` it computes the local
loss at depth ``k + 1``, trains head ``k`` on it, and, if that loss closes a window, chains its
gradient down through the per-block graphs by vector-Jacobian products and accumulates it into the
parameters of the blocks it trains. Every block graph is released as soon as the last loss that
needs it has been used, so the activations held at any time are those of at most ``horizon``
consecutive blocks plus one head.

The engine is driven either by an explicit loop (:func:`horizon_backward`) or by forward hooks on a
model's own ``forward`` (:mod:`lightning_mpc.core.hooks`); both follow the same code path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.core.partition import hook_points
from lightning_mpc.core.schedule import Mode, target_depths, validate_mode

LossOnPrediction = Callable[[Tensor], Tensor]
LossScale = Callable[[Tensor], Tensor]


def _trainable(module: nn.Module | None) -> list[nn.Parameter]:
    if module is None:
        return []
    return [p for p in module.parameters() if p.requires_grad]


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Backward passes run outside autocast, as PyTorch recommends."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _leaf(output: Tensor) -> Tensor:
    """A new graph leaf sharing ``output``'s storage; the next block's graph starts here."""
    leaf = output.detach()
    if output.requires_grad and leaf.is_floating_point():
        leaf.requires_grad_(True)
    return leaf


def modifies_input_in_place(block: nn.Module) -> bool:
    """Whether the first module ``block`` runs is declared in place (``inplace=True``: ReLU, Dropout, SiLU, ...).

    Follows the block's entry module (see :func:`~lightning_mpc.core.partition.hook_points`) down through
    first children. Blocks that modify their input in place by other means are found by the Lightning
    strategies' dry run (the input's version counter); pass them to ``HorizonEngine(clone_inputs=...)``.
    """
    module, _ = hook_points(block)
    while True:
        if getattr(module, "inplace", False) is True:
            return True
        children = list(module.children())
        if not children or not isinstance(module, nn.Sequential):
            return False
        module = hook_points(children[0])[0]


class HorizonEngine:
    """Incremental executor of the horizon rule for one training step at a time.

    Args:
        blocks: the blocks ``0..T-1``, applied in order.
        heads: ``T - 1`` local heads; ``heads[k]`` maps block ``k``'s output to a prediction.
            ``None`` or a module without parameters applies the loss to the block output directly.
        horizon: ``h >= 1``; values above ``T`` mean back-propagation.
        mode: ``"sliding"`` (block ``k`` learns from depth ``min(k+h, T)``) or ``"block"``
            (non-overlapping windows of ``h`` blocks).
        clone_inputs: indices of blocks that modify their input in place: they receive a copy of the
            previous block's output, because autograd refuses in-place operations on the graph leaf the
            engine would hand them. Blocks whose first module is declared ``inplace=True``
            (``nn.ReLU(inplace=True)``, see :func:`modifies_input_in_place`) are always included.

    Memory: the engine keeps a block's graph and its input leaf only until the last window that needs
    them has closed (block ``k``'s own window, at depth ``d_k``), so for a fixed horizon the tensors held
    do not depend on the number of blocks.

    Call :meth:`start` with the step's loss function, then :meth:`block_output` for each block in
    order (it returns the tensor to feed forward), then back-propagate the final loss into the
    returned last output and call :meth:`complete`, or use :meth:`finish` to do both.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        heads: Sequence[nn.Module | None],
        horizon: int,
        mode: Mode = "sliding",
        clone_inputs: Collection[int] | None = None,
    ) -> None:
        blocks = list(blocks)
        heads = list(heads)
        if not blocks:
            raise ValueError("HorizonEngine got no blocks. HINT: pass the model cut into blocks, see partition().")
        if len(heads) != len(blocks) - 1:
            raise ValueError(
                f"Expected {len(blocks) - 1} heads for {len(blocks)} blocks (one per block but the last), "
                f"got {len(heads)}. HINT: the last block's output is the model's output and has no head."
            )
        self.blocks = blocks
        self.heads = heads
        self.num_blocks = len(blocks)
        self.mode = validate_mode(mode)
        self.horizon = horizon
        self.depths = target_depths(self.num_blocks, horizon, self.mode)
        declared = {k for k, block in enumerate(blocks) if k > 0 and modifies_input_in_place(block)}
        self.clone_inputs: frozenset[int] = frozenset(declared.union(clone_inputs or ()))
        self._members: dict[int, list[int]] = {}
        for block, depth in enumerate(self.depths):
            self._members.setdefault(depth, []).append(block)
        self._block_params: list[list[nn.Parameter]] = []
        self._head_params: list[list[nn.Parameter]] = []
        self._loss_fn: LossOnPrediction | None = None
        self._scale: LossScale | None = None
        self.on_grad_ready: Callable[[Sequence[nn.Parameter]], None] | None = None
        """Called with a block's or head's trainable parameters once the engine has written its last gradient
        of the step into them (e.g. to start their all-reduce). A parameter shared with a later block, or used
        after the last block, may still receive more: see :class:`~lightning_mpc.core.gradsync.GradientAverager`."""
        self.observer: EngineObserver | None = None
        """Receives the step's events (timing, memory, telemetry): an :class:`EngineObserver`, or ``None``."""
        self._reset_state()

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        self._next = 0
        self._started = -1
        self._outputs: list[Tensor | None] = [None] * self.num_blocks
        self._leaves: list[Tensor | None] = [None] * (self.num_blocks + 1)
        self.local_losses: list[Tensor | None] = [None] * (self.num_blocks - 1)

    @property
    def active(self) -> bool:
        """Whether a step is in progress (started and not yet completed or reset)."""
        return self._loss_fn is not None

    @property
    def blocks_done(self) -> int:
        """How many blocks have produced their output in the current step."""
        return self._next

    def start(self, loss_fn: LossOnPrediction, scale: LossScale | None = None) -> None:
        """Begin a step.

        Args:
            loss_fn: maps a local prediction (a head's output) to a scalar loss for this step's batch.
            scale: applied to every local loss before its backward (gradient scaling, division by the
                number of accumulated batches). Defaults to the identity.
        """
        self._reset_state()
        # Read per step: a callback may freeze or unfreeze parameters between steps.
        self._block_params = [_trainable(block) for block in self.blocks]
        self._head_params = [_trainable(head) for head in self.heads]
        self._loss_fn = loss_fn
        self._scale = scale
        if self.observer is not None:
            self.observer.step_started()

    def reset(self) -> None:
        """Abandon the current step and release every graph it holds."""
        self._reset_state()
        self._loss_fn = None
        self._scale = None

    # ------------------------------------------------------------ forward side
    def block_started(self, index: int) -> None:
        """Note that block ``index`` begins its forward; checks the order of blocks."""
        if not self.active:
            return
        if index != self._next or self._started == index:
            raise RuntimeError(self._order_message(index))
        self._started = index
        if self.observer is not None:
            self.observer.block_started(index)

    def block_output(self, index: int, output: Tensor) -> Tensor:
        """Take block ``index``'s output, run every backward that is now due, and return the leaf to feed forward.

        Args:
            index: the block's position ``k``.
            output: ``x_{k+1}``, the block's output, still attached to the block's graph.

        Returns:
            A detached leaf sharing ``output``'s storage, to be fed to block ``k + 1`` (or to the final loss).
        """
        if self._loss_fn is None:
            raise RuntimeError("HorizonEngine.block_output called before start(). HINT: call start(loss_fn) first.")
        if index != self._next:
            raise RuntimeError(self._order_message(index))
        if not isinstance(output, Tensor):
            raise TypeError(
                f"Block {index} ({type(self.blocks[index]).__name__}) returned {type(output).__name__}, "
                "expected a Tensor. HINT: blocks must map one tensor to one tensor; wrap multi-output "
                "modules so that they return a single tensor."
            )
        if not (output.is_floating_point() or output.is_complex()):
            raise TypeError(
                f"Block {index} ({type(self.blocks[index]).__name__}) returned a {output.dtype} tensor of shape "
                f"{tuple(output.shape)}: no gradient flows through integer values, so the blocks before it could "
                "never learn. HINT: end the block before the op that produces integers, or put that op after the "
                "last block."
            )
        if self.observer is not None:
            self.observer.block_finished(index, output)
        self._outputs[index] = output if output.requires_grad else None
        leaf = _leaf(output)
        depth = index + 1
        self._leaves[depth] = leaf
        self._next = depth
        if depth < self.num_blocks:
            self._local_step(index, leaf)
            if depth in self.clone_inputs and leaf.requires_grad:
                # The next block writes into its input: give it a copy whose graph leads back to the leaf.
                return leaf.clone()
        return leaf

    def _local_step(self, index: int, leaf: Tensor) -> None:
        """Train head ``index`` on the loss at depth ``index + 1`` and close that depth's window if it has one."""
        assert self._loss_fn is not None
        depth = index + 1
        head = self.heads[index]
        try:
            prediction = leaf if head is None else head(leaf)
        except RuntimeError as err:
            raise RuntimeError(
                f"Head {index} ({type(head).__name__}) failed on block {index}'s output of shape {tuple(leaf.shape)} "
                f"({type(self.blocks[index]).__name__}): {err} HINT: each head must accept its block's output; a "
                "custom head from configure_heads() may have the wrong input size, or the blocks changed since the "
                "heads were built (delete the heads, or return heads that fit from configure_heads())."
            ) from err
        try:
            loss = self._loss_fn(prediction)
        except (RuntimeError, ValueError, TypeError) as err:
            if "HINT" in str(err):
                raise
            raise type(err)(
                f"The local loss of head {index} failed on a prediction of shape {tuple(prediction.shape)}: {err} "
                "HINT: the local loss (MPCMixin.local_loss, default cross-entropy on batch[1]) must accept every "
                "head's prediction; override local_loss(prediction, batch) for other targets."
            ) from err
        self.local_losses[index] = loss.detach()
        observer = self.observer
        if observer is not None:
            observer.local_loss(index, prediction, loss)
        closes_window = depth in self._members and leaf.requires_grad
        inputs: list[Tensor] = list(self._head_params[index])
        if closes_window:
            inputs.append(leaf)
        if inputs and loss.requires_grad:
            scaled = loss if self._scale is None else self._scale(loss)
            if observer is not None:
                observer.backward_started(index)
            with _no_autocast(leaf.device):
                torch.autograd.backward(scaled, inputs=inputs)
            if observer is not None:
                observer.backward_finished(index)
        if head is not None and self._head_params[index]:
            self._grad_ready(self._head_params[index])
        if depth in self._members:
            self._chain(depth, self._take_grad(leaf) if closes_window else None)

    # ----------------------------------------------------------- backward side
    def complete(self) -> None:
        """Finish the step after the final loss was back-propagated into the last returned leaf."""
        if self._loss_fn is None:
            return
        if self._next != self.num_blocks:
            raise RuntimeError(
                f"Only {self._next} of {self.num_blocks} blocks ran before the final backward. "
                "HINT: every block must run exactly once per training step, in order."
            )
        last = self._leaves[self.num_blocks]
        grad = None if last is None else self._take_grad(last)
        observer = self.observer
        if observer is not None:
            observer.output_gradient(grad)
        self._chain(self.num_blocks, grad)
        self.reset()
        if observer is not None:
            observer.step_completed()

    def finish(self, final_loss: Tensor) -> None:
        """Back-propagate the final loss (scaled like the local ones) and complete the step."""
        if final_loss.requires_grad:
            scaled = final_loss if self._scale is None else self._scale(final_loss)
            with _no_autocast(final_loss.device):
                scaled.backward()
        self.complete()

    @staticmethod
    def _take_grad(leaf: Tensor) -> Tensor | None:
        grad = leaf.grad
        leaf.grad = None
        return grad

    def _chain(self, depth: int, grad: Tensor | None) -> None:
        """Carry ``d l_depth / d x_depth`` down through the window and into the blocks it trains."""
        members = self._members[depth]
        lowest = members[0]
        for block in range(depth - 1, lowest - 1, -1):
            output = self._outputs[block]
            is_member = self.depths[block] == depth
            if grad is not None and output is not None:
                leaf_in = self._leaves[block]
                pass_down = block > lowest and leaf_in is not None and leaf_in.requires_grad
                inputs: list[Tensor] = list(self._block_params[block]) if is_member else []
                if pass_down:
                    inputs.append(leaf_in)  # type: ignore[arg-type]
                if inputs:
                    if self.observer is not None:
                        self.observer.backward_started(block)
                    with _no_autocast(output.device):
                        torch.autograd.backward(output, grad, inputs=inputs, retain_graph=not is_member)
                    if self.observer is not None:
                        self.observer.backward_finished(block)
                grad = self._take_grad(leaf_in) if pass_down else None  # type: ignore[arg-type]
            else:
                grad = None
            if is_member:
                # The last loss that needs this block has been used: release its graph and its input leaf.
                self._outputs[block] = None
                self._leaves[block] = None
                self._grad_ready(self._block_params[block])

    def _grad_ready(self, params: Sequence[nn.Parameter]) -> None:
        if self.on_grad_ready is not None:
            self.on_grad_ready(params)

    def _order_message(self, index: int) -> str:
        return (
            f"Block {index} ({type(self.blocks[index]).__name__}) ran out of order: expected block {self._next} "
            f"of {self.num_blocks}. HINT: horizon training needs the forward to run every block exactly once, "
            "in order, per training step; if the model calls a block twice or skips one, supply the blocks "
            "yourself (configure_blocks) so that they match the forward."
        )


def horizon_backward(
    blocks: Sequence[nn.Module],
    heads: Sequence[nn.Module | None],
    x: Any,
    target: Any,
    loss_fn: Callable[[Tensor, Any], Tensor],
    horizon: int,
    mode: Mode = "sliding",
    *,
    scale: LossScale | None = None,
    observer: EngineObserver | None = None,
) -> Tensor:
    """Accumulate horizon-truncated gradients into every block and head parameter.

    Block ``k`` receives the gradient of the loss at depth ``min(k + h, T)`` (``"sliding"``) or at the
    end of its window of ``h`` blocks (``"block"``); head ``k`` receives the gradient of its own loss
    ``loss_fn(heads[k](x_{k+1}), target)``. The final loss is ``loss_fn(x_T, target)``. Forward and
    backward are interleaved, so the activations held at any time are those of at most ``h``
    consecutive blocks plus one head. ``h >= T`` is exact back-propagation.

    Gradients are added to ``.grad`` (as ``Tensor.backward`` does): zero them before if needed.

    Args:
        blocks: the model cut into blocks, applied in order (see :func:`lightning_mpc.partition`).
        heads: ``len(blocks) - 1`` local heads, ``None`` or ``nn.Identity`` for none.
        x: the input of block 0.
        target: passed as the second argument of ``loss_fn``.
        loss_fn: ``loss_fn(prediction, target) -> scalar``.
        horizon: ``h >= 1``.
        mode: ``"sliding"`` or ``"block"``.
        scale: optional map applied to every loss before its backward (e.g. a ``GradScaler``'s
            ``scale`` or a division by the number of accumulated batches).
        observer: receives the step's events (per-block timing, memory, losses); see
            :class:`~lightning_mpc.core.observer.EngineObserver` and :class:`lightning_mpc.telemetry.StepRecorder`.

    Returns:
        The final loss, detached.
    """
    engine = HorizonEngine(blocks, heads, horizon, mode)
    engine.observer = observer
    engine.start(lambda prediction: loss_fn(prediction, target), scale)
    try:
        for index, block in enumerate(engine.blocks):
            engine.block_started(index)
            x = engine.block_output(index, block(x))
        final = loss_fn(x, target)
        engine.finish(final)
    finally:
        engine.reset()
    return final.detach()


def iter_parameters(modules: Sequence[nn.Module | None]) -> Iterator[nn.Parameter]:
    """Every trainable parameter of ``modules`` (``None`` entries skipped), each once."""
    seen: set[int] = set()
    for module in modules:
        for param in _trainable(module):
            if id(param) not in seen:
                seen.add(id(param))
                yield param
