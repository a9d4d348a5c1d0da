"""Device-independent activation-memory accounting.

Activation memory is measured as the bytes of distinct tensor storages that autograd graphs hold
for backward (parameters excluded), tracked live with :func:`torch.autograd.graph.saved_tensors_hooks`
and a finalizer on every packed tensor. The figure is deterministic, works on CPU and compares across
machines; on CUDA, ``torch.cuda.max_memory_allocated`` measures the same thing plus the allocator's
overheads.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mpc.core.schedule import Mode, windows

__all__ = ["BlockProfile", "RealMemoryProfile", "SavedTensorMeter", "preserved_buffers", "profile_blocks", "profile_real_memory"]


def storage_key(tensor: Tensor) -> tuple[str, int]:
    """Identity of the storage behind ``tensor`` (views and detached aliases share it)."""
    storage = tensor.untyped_storage()
    return (str(tensor.device), storage.data_ptr())


class _Packed:
    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


class SavedTensorMeter:
    """Context manager counting the bytes autograd saves for backward while it is active.

    Graphs built inside the context report their saved tensors until they are freed, even if that
    happens after the context exits. Storages shared by several saved tensors (views, detached
    leaves) are counted once.

    Args:
        exclude: tensors whose storages are not activations (typically ``model.parameters()``).

    Example::

        meter = SavedTensorMeter(exclude=model.parameters())
        with meter:
            model(x).sum().backward()
        print(meter.peak_bytes)
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._excluded = {storage_key(t) for t in exclude}
        self.seen: dict[tuple[str, int], int] = {}
        """Every storage packed since the last :meth:`take_seen`, with its size."""
        self._refs: dict[tuple[str, int], int] = {}
        self._sizes: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self.current_bytes = 0
        self.peak_bytes = 0
        self._hooks: contextlib.AbstractContextManager[Any] | None = None

    def reset_peak(self) -> None:
        """Start a new peak from the bytes held now."""
        with self._lock:
            self.peak_bytes = self.current_bytes

    def take_seen(self) -> dict[tuple[str, int], int]:
        """The storages packed since the last call (by storage key, with their sizes), and start afresh."""
        with self._lock:
            seen, self.seen = self.seen, {}
        return seen

    def _pack(self, tensor: Tensor) -> Any:
        key = storage_key(tensor)
        if key in self._excluded or isinstance(tensor, nn.Parameter):
            return tensor
        # Hold a detached alias: keeping the tensor itself would keep its grad_fn alive, a reference
        # cycle (output -> grad_fn -> saved output) that outlives the graph.
        packed = _Packed(tensor.detach())
        with self._lock:
            self.seen[key] = tensor.untyped_storage().nbytes()
            count = self._refs.get(key, 0)
            if count == 0:
                size = tensor.untyped_storage().nbytes()
                self._sizes[key] = size
                self.current_bytes += size
                self.peak_bytes = max(self.peak_bytes, self.current_bytes)
            self._refs[key] = count + 1
        weakref.finalize(packed, self._release, key)
        return packed

    def _release(self, key: tuple[str, int]) -> None:
        with self._lock:
            count = self._refs[key] - 1
            if count == 0:
                del self._refs[key]
                self.current_bytes -= self._sizes.pop(key)
            else:
                self._refs[key] = count

    @staticmethod
    def _unpack(packed: Any) -> Tensor:
        return packed.tensor if isinstance(packed, _Packed) else packed

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        self._hooks = None


@contextlib.contextmanager
def preserved_buffers(modules: Iterable[nn.Module | None]) -> Iterator[None]:
    """Restore every buffer (BatchNorm running statistics, ...) of ``modules`` on exit.

    Measurements and probes run extra forwards; this keeps them from moving the model's state.
    """
    saved = []
    for module in modules:
        if module is None:
            continue
        for buffer in module.buffers():
            saved.append((buffer, buffer.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@dataclass(frozen=True)
class BlockProfile:
    """Activation storages each block and each head (with its loss) saves for backward.

    Storages are identified across blocks, so a tensor saved both by a block (as its output) and by the
    next block or head (as its input) is counted once, as in a real step.

    Attributes:
        block_bytes: one entry per block: the bytes its graph saves.
        head_bytes: one entry per depth ``1..T``: head ``j-1`` with its loss for ``j < T``, the final
            loss for ``j = T``.
        block_storages: per block, the bytes of every distinct storage it saves, by storage key.
        head_storages: per depth, likewise for the head and its loss.
    """

    block_bytes: list[int]
    head_bytes: list[int]
    block_storages: list[dict[Any, int]]
    head_storages: list[dict[Any, int]]

    def _union_bytes(self, groups: Iterable[dict[Any, int]]) -> int:
        union: dict[Any, int] = {}
        for group in groups:
            union.update(group)
        return sum(union.values())

    def window_limit(self, horizon: int, mode: Mode = "sliding") -> int:
        """The physical limit for a horizon: the largest window of blocks held together, plus its head."""
        num_blocks = len(self.block_bytes)
        spans = windows(num_blocks, horizon, mode)
        return max(
            self._union_bytes([*(self.block_storages[k] for k in span), self.head_storages[depth - 1]])
            for depth, span in enumerate(spans, start=1)
        )

    @property
    def backprop_bytes(self) -> int:
        """Every block plus the final loss: the figure for back-propagation."""
        return self._union_bytes([*self.block_storages, self.head_storages[-1]])


def _head_loss(head: nn.Module | None, leaf: Tensor, target: Any, loss_fn: Callable[[Tensor, Any], Tensor]) -> Tensor:
    return loss_fn(leaf if head is None else head(leaf), target)


def profile_blocks(
    blocks: Sequence[nn.Module],
    heads: Sequence[nn.Module | None],
    x: Tensor,
    target: Any,
    loss_fn: Callable[[Tensor, Any], Tensor],
) -> BlockProfile:
    """Measure the activation storages of every block and head on one batch.

    Each block runs once, on a detached copy of the previous output that requires grad, as in the
    interleaved schedule; every saved storage stays alive until the profile is done, so storages are
    identified exactly across blocks. Peak memory while profiling is that of back-propagation.
    Buffers (BatchNorm statistics) are restored afterwards.
    """
    modules: list[nn.Module | None] = [*blocks, *heads]
    meter = SavedTensorMeter(exclude=[p for m in modules if m is not None for p in m.parameters()])
    keep: list[Tensor] = []  # every graph stays alive until the end, so storage keys stay unique
    block_storages: list[dict[Any, int]] = []
    head_storages: list[dict[Any, int]] = []
    with preserved_buffers(modules), meter:
        current = x
        for index, block in enumerate(blocks):
            inp = current.detach().requires_grad_(current.is_floating_point() and index > 0)
            current = block(inp)
            keep.append(current)
            block_storages.append(meter.take_seen())
            head = heads[index] if index < len(heads) else None
            leaf = current.detach().requires_grad_(current.is_floating_point())
            keep.append(_head_loss(head, leaf, target, loss_fn))
            head_storages.append(meter.take_seen())
    del keep
    return BlockProfile(
        block_bytes=[sum(s.values()) for s in block_storages],
        head_bytes=[sum(s.values()) for s in head_storages],
        block_storages=block_storages,
        head_storages=head_storages,
    )


# --------------------------------------------------------------------------- real memory: a window model
@dataclass(frozen=True)
class RealMemoryProfile:
    """What each block and head allocates in a real step (allocator bytes), measured one block at a time.

    Measured by :func:`profile_real_memory` with :class:`~lightning_mpc.core.realmem.RealMemoryMeter`, with
    every parameter's ``.grad`` allocated beforehand (the steady state of training with gradients zeroed in
    place; see the docs for steps that allocate them). From these figures :meth:`predict_peak` replays the
    interleaved schedule of :class:`~lightning_mpc.core.engine.HorizonEngine` (which tensor is allocated and
    released when) and predicts the real peak of a step at any horizon and mode; ``h = T`` is
    back-propagation.

    Attributes:
        output_bytes: per block, the bytes of its output ``x_{k+1}`` (the next block's input).
        graph_bytes: per block, what its graph holds after its forward besides its output (saved activations).
        forward_peak: per block, the peak above the start of its forward (output, graph and temporaries).
        head_peak: per depth ``1..T``: head ``k`` with its loss and backward (the final loss for ``k = T-1``),
            including the gradient at the block output it leaves behind.
        backward_peak: per block, the peak above the start of a backward through its graph (the incoming
            gradient excluded): gradient buffers and temporaries.
        parameter_grad_bytes: per block, the bytes of its trainable parameters' gradients.
        head_grad_bytes: per block but the last, the bytes of its head's parameters' gradients.
    """

    output_bytes: list[int]
    graph_bytes: list[int]
    forward_peak: list[int]
    head_peak: list[int]
    backward_peak: list[int]
    parameter_grad_bytes: list[int] = field(default_factory=list)
    head_grad_bytes: list[int] = field(default_factory=list)

    @property
    def num_blocks(self) -> int:
        return len(self.output_bytes)

    def predict_peak(self, horizon: int, mode: Mode = "sliding", *, allocate_gradients: bool = False) -> int:
        """The predicted real peak of one step at ``horizon`` (``>= T``: back-propagation).

        With ``allocate_gradients`` the step starts without ``.grad`` (``zero_grad(set_to_none=True)``, what
        Lightning does before every optimizer step) and allocates each parameter's gradient during its backward.
        """
        return self.simulate(horizon, mode, allocate_gradients=allocate_gradients)[0]

    def breakdown(self, horizon: int, mode: Mode = "sliding", *, allocate_gradients: bool = False) -> dict[str, int]:
        """What the predicted peak is made of: ``outputs`` (block outputs and leaves still referenced),
        ``graphs`` (saved activations), ``gradients`` (gradients passed down, and parameters' gradients
        allocated during the step) and ``temporaries``."""
        return self.simulate(horizon, mode, allocate_gradients=allocate_gradients)[1]

    def simulate(self, horizon: int, mode: Mode = "sliding", *, allocate_gradients: bool = False) -> tuple[int, dict[str, int]]:
        """Replay the engine's allocations and releases; return the peak and its breakdown."""
        from lightning_mpc.core.schedule import target_depths

        num_blocks = self.num_blocks
        depths = target_depths(num_blocks, horizon, mode)
        members: dict[int, list[int]] = {}
        for block, depth in enumerate(depths):
            members.setdefault(depth, []).append(block)
        outputs = 0  # block outputs alive (x_1 .. x_T; x_0 is the caller's batch)
        # x_{k+1} is held by block k's graph (the output it may have saved) and by block k+1's input leaf;
        # its storage is released with the last of the two.
        holders = [2] * num_blocks
        holders[-1] = 1
        graphs = 0
        allocated = 0  # parameters' gradients allocated during the step
        graph_alive = [False] * num_blocks
        peak, parts = 0, {"outputs": 0, "graphs": 0, "gradients": 0, "temporaries": 0}
        parameter_grads = self.parameter_grad_bytes or [0] * num_blocks
        head_grads = self.head_grad_bytes or [0] * num_blocks

        def note(temporary: int, gradient: int = 0) -> None:
            nonlocal peak, parts
            total = outputs + graphs + gradient + allocated + temporary
            if total > peak:
                peak = total
                parts = {"outputs": outputs, "graphs": graphs, "gradients": gradient + allocated, "temporaries": temporary}

        for block in range(num_blocks):
            note(self.forward_peak[block])
            outputs += self.output_bytes[block]
            graphs += self.graph_bytes[block]
            graph_alive[block] = True
            depth = block + 1
            if allocate_gradients and block < len(head_grads):
                allocated += head_grads[block]
            note(self.head_peak[block])
            if depth not in members:
                continue
            low = members[depth][0]
            gradient = self.output_bytes[block]  # d l_depth / d x_depth, left by the head's backward
            for inner in range(depth - 1, low - 1, -1):
                if allocate_gradients and depths[inner] == depth:
                    allocated += parameter_grads[inner]
                note(self.backward_peak[inner], gradient)
                gradient = self.output_bytes[inner - 1] if inner > low else 0
                if depths[inner] == depth and graph_alive[inner]:
                    graph_alive[inner] = False
                    graphs -= self.graph_bytes[inner]
                    for held in (inner, inner - 1):  # its output x_{inner+1}, its input leaf x_inner
                        if held >= 0:
                            holders[held] -= 1
                            if holders[held] == 0:
                                outputs -= self.output_bytes[held]
        return peak, parts


def profile_real_memory(
    blocks: Sequence[nn.Module],
    heads: Sequence[nn.Module | None],
    x: Tensor,
    target: Any,
    loss_fn: Callable[[Tensor, Any], Tensor],
    device: torch.device | str | None = None,
    *,
    local_losses: bool = True,
) -> RealMemoryProfile:
    """Measure :class:`RealMemoryProfile` on one batch, one block at a time (about one block's memory).

    Gradients, buffers (BatchNorm statistics) and the random state are left as they were.

    Args:
        blocks: the blocks, in order.
        heads: ``len(blocks) - 1`` local heads (``None`` for none).
        x: block 0's input.
        target: the second argument of ``loss_fn``.
        loss_fn: ``loss_fn(prediction, target) -> scalar``, for the heads and the final output.
        device: the allocator to measure (default: ``x``'s device).
        local_losses: ``False`` measures no local loss (only the final one): for predicting what
            back-propagation holds, or rules without local heads.
    """
    from lightning_mpc.core.isolation import forked_rng, isolated_gradients
    from lightning_mpc.core.realmem import RealMemoryMeter

    modules: list[nn.Module | None] = [*blocks, *heads]
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    num_blocks = len(blocks)
    meter = RealMemoryMeter(device if device is not None else x.device)
    output_bytes: list[int] = []
    with isolated_gradients(params), preserved_buffers(modules), forked_rng([x.device]), torch.enable_grad():
        for param in params:
            param.grad = torch.zeros_like(param)
        with meter:
            current = x.detach()
            for index, block in enumerate(blocks):
                leaf = current.detach().requires_grad_(index > 0 and current.is_floating_point())
                meter.mark()  # 3 * index: forward
                out = block(leaf)
                output_bytes.append(out.untyped_storage().nbytes())
                out_leaf = out.detach().requires_grad_(out.is_floating_point())
                meter.mark()  # 3 * index + 1: head (or final loss) with its backward
                last = index == num_blocks - 1
                if last or local_losses:
                    head = None if last else heads[index]
                    prediction = out_leaf if head is None else head(out_leaf)
                    loss = loss_fn(prediction, target)
                    head_params = [] if head is None else [p for p in head.parameters() if p.requires_grad]
                    if loss.requires_grad:
                        torch.autograd.backward(loss, inputs=[*head_params, out_leaf])
                    del prediction, loss
                grad = out_leaf.grad if out_leaf.grad is not None else torch.ones_like(out)
                out_leaf.grad = None
                meter.mark()  # 3 * index + 2: backward through the block
                if out.requires_grad:
                    inputs = [p for p in block.parameters() if p.requires_grad]
                    if leaf.requires_grad:
                        inputs.append(leaf)
                    if inputs:
                        torch.autograd.backward(out, grad, inputs=inputs)
                leaf.grad = None
                del grad
                current = out.detach()
                del out, out_leaf, leaf
    result = meter.result
    assert result is not None
    peaks, levels = result.interval_peaks, result.interval_levels

    def span(phase: int) -> tuple[int, int, int]:
        start = levels[phase]
        end = levels[phase + 1] if phase + 1 < len(levels) else result.end_bytes
        return peaks[phase] - start, end - start, start

    forward_peak, graph_bytes, head_peak, backward_peak = [], [], [], []
    for index in range(num_blocks):
        fwd_peak, fwd_net, _ = span(3 * index)
        hd_peak, _, _ = span(3 * index + 1)
        bwd_peak, _, _ = span(3 * index + 2)
        forward_peak.append(max(fwd_peak, 0))
        graph_bytes.append(max(fwd_net - output_bytes[index], 0))
        head_peak.append(max(hd_peak, 0))
        # The incoming gradient is accounted for by the model; the peak here is above it.
        backward_peak.append(max(bwd_peak, 0))
    def grad_bytes(module: nn.Module | None) -> int:
        if module is None:
            return 0
        return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)

    return RealMemoryProfile(
        output_bytes,
        graph_bytes,
        forward_peak,
        head_peak,
        backward_peak,
        parameter_grad_bytes=[grad_bytes(block) for block in blocks],
        head_grad_bytes=[grad_bytes(heads[k]) if k < len(heads) and local_losses else 0 for k in range(num_blocks)],
    )
