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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mpc.core.schedule import Mode, windows

__all__ = ["BlockProfile", "SavedTensorMeter", "preserved_buffers", "profile_blocks"]


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

    def _pack(self, tensor: Tensor) -> Any:
        key = storage_key(tensor)
        if key in self._excluded or isinstance(tensor, nn.Parameter):
            return tensor
        # Hold a detached alias: keeping the tensor itself would keep its grad_fn alive, a reference
        # cycle (output -> grad_fn -> saved output) that outlives the graph.
        packed = _Packed(tensor.detach())
        with self._lock:
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

    def __exit__(self, *exc: Any) -> None:
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


class _StorageRecorder:
    """Saved-tensor hooks that note every storage saved while active and keep it alive (unique keys)."""

    def __init__(self, exclude: set[tuple[str, int]]) -> None:
        self.exclude = exclude
        self.keep: list[Tensor] = []
        self.found: dict[Any, int] = {}

    def pack(self, tensor: Tensor) -> Tensor:
        key = storage_key(tensor)
        if key not in self.exclude and not isinstance(tensor, nn.Parameter):
            self.found[key] = tensor.untyped_storage().nbytes()
            self.keep.append(tensor.detach())
        return tensor.detach()

    def record(self, fn: Callable[..., Tensor], *args: Any) -> tuple[Tensor, dict[Any, int]]:
        self.found = {}
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            out = fn(*args)
        return out, self.found


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
    recorder = _StorageRecorder({storage_key(p) for m in modules if m is not None for p in m.parameters()})
    block_storages: list[dict[Any, int]] = []
    head_storages: list[dict[Any, int]] = []
    with preserved_buffers(modules):
        current = x
        for index, block in enumerate(blocks):
            inp = current.detach().requires_grad_(current.is_floating_point() and index > 0)
            current, found = recorder.record(block, inp)
            block_storages.append(found)
            head = heads[index] if index < len(heads) else None
            leaf = current.detach().requires_grad_(current.is_floating_point())
            _, found = recorder.record(_head_loss, head, leaf, target, loss_fn)
            head_storages.append(found)
    return BlockProfile(
        block_bytes=[sum(s.values()) for s in block_storages],
        head_bytes=[sum(s.values()) for s in head_storages],
        block_storages=block_storages,
        head_storages=head_storages,
    )
