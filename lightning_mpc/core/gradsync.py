"""Averaging gradients across processes without DistributedDataParallel's reducer.

DDP's reducer assumes one backward per forward; horizon training runs one backward per window, so the
MPC strategies average gradients themselves. A window's gradients are final as soon as the window
closes, so their all-reduce can start then and overlap with the forward and backward of the blocks
after it (``launch``), something back-propagation cannot do before its single backward reaches the
first layer. ``finish`` reduces whatever is left, waits, and divides by the world size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = ["GradientAverager", "broadcast_tensors"]


def _buckets(tensors: list[Tensor]) -> list[list[Tensor]]:
    """Group tensors by (device, dtype): each group flattens into one buffer."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    return list(groups.values())


def broadcast_tensors(tensors: Iterable[Tensor], src: int = 0, group: Any = None) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values, in one collective per dtype."""
    for bucket in _buckets([t for t in tensors]):
        flat = _flatten_dense_tensors([t.detach() for t in bucket])
        dist.broadcast(flat, src=src, group=group)
        with torch.no_grad():
            for tensor, value in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                tensor.copy_(value)


class GradientAverager:
    """Averages ``.grad`` of parameters across the processes of a group, in buckets launched early.

    Every process must launch the same buckets in the same order, which holds because every process
    runs the same blocks in the same schedule. Parameters whose ``.grad`` is ``None`` are left out
    (as in DDP with ``find_unused_parameters=False``, every process must agree on which those are).

    Args:
        group: the process group (default: the world).
        asynchronous: launch each bucket's all-reduce without waiting (overlap with compute).
    """

    def __init__(self, group: Any = None, asynchronous: bool = True) -> None:
        self.group = group
        self.asynchronous = asynchronous
        self.bytes_communicated = 0
        self._pending: list[tuple[Any, Tensor, list[Tensor]]] = []
        self._done: set[int] = set()

    def launch(self, params: Iterable[Tensor]) -> None:
        """Start reducing the gradients of ``params`` not reduced yet in this step."""
        grads = []
        for param in params:
            if id(param) in self._done or param.grad is None:
                continue
            self._done.add(id(param))
            grads.append(param.grad)
        for bucket in _buckets(grads):
            flat = _flatten_dense_tensors(bucket)
            self.bytes_communicated += flat.numel() * flat.element_size()
            handle = dist.all_reduce(flat, group=self.group, async_op=self.asynchronous)
            self._pending.append((handle, flat, bucket))

    def finish(self, params: Iterable[Tensor]) -> None:
        """Reduce the rest of ``params``, wait for every bucket and write the averages into ``.grad``."""
        self.launch(params)
        world = dist.get_world_size(self.group)
        for handle, flat, bucket in self._pending:
            if handle is not None:
                handle.wait()
            flat.div_(world)
            for grad, value in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                grad.copy_(value)
        self._pending.clear()
        self._done.clear()

    def cancel(self) -> None:
        """Forget the step in progress (waiting for launched collectives so that none is left in flight)."""
        for handle, _, _ in self._pending:
            if handle is not None:
                handle.wait()
        self._pending.clear()
        self._done.clear()
