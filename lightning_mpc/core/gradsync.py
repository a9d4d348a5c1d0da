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
from torch import Tensor, nn
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

    A parameter's all-reduce may only start once nothing will add to its gradient in the step. The engine
    reports when a block's or head's own gradients are done (:meth:`ready`), but a parameter can also be
    shared with a later block (tied weights) or used after the last block (a tied output projection), so the
    averager learns when every parameter is final instead of trusting the blocks: on the first reducing step
    of a schedule it communicates nothing early and records, through post-accumulate-grad hooks, after which
    :meth:`ready` event each parameter received its last contribution; from the next reducing step on it
    launches each parameter at that event. A contribution that arrives after a parameter was launched (the
    graph changed between steps) stops training with an error rather than averaging a partial gradient.

    Every process launches the same buckets in the same order, because every process runs the same blocks
    in the same schedule. Parameters whose ``.grad`` is ``None`` are left out (as in DDP with
    ``find_unused_parameters=False``, every process must agree on which those are).

    Args:
        group: the process group (default: the world).
        asynchronous: launch buckets early and without waiting (overlap with compute); ``False`` reduces
            everything in :meth:`finish`.
    """

    def __init__(self, group: Any = None, asynchronous: bool = True) -> None:
        self.group = group
        self.asynchronous = asynchronous
        self.bytes_communicated = 0
        self._pending: list[tuple[Any, Tensor, list[Tensor]]] = []
        self._done: set[int] = set()
        self._params: list[nn.Parameter] = []
        self._names: dict[int, str] = {}
        self._handles: list[Any] = []
        self._schedule: dict[int, int] | None = None
        self._schedule_key: Any = None
        self._learning = False
        self._active = False
        self._event = 0
        self._last_event: dict[int, int] = {}
        self._late: list[str] = []

    # ------------------------------------------------------------------ set-up
    def attach(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        """Watch these parameters (once per fit): their gradient contributions time the early launches."""
        self.detach()
        for name, param in named_parameters:
            if id(param) in self._names:
                continue
            self._params.append(param)
            self._names[id(param)] = name
            self._handles.append(param.register_post_accumulate_grad_hook(self._on_accumulate))

    def detach(self) -> None:
        """Remove the hooks and forget the parameters and the learned schedule."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._params.clear()
        self._names.clear()
        self._schedule = None

    # ------------------------------------------------------------------ one reducing step
    def start_step(self, key: Any = None) -> None:
        """Begin a step whose gradients are reduced; ``key`` identifies the schedule (a new key relearns it)."""
        if key != self._schedule_key:
            self._schedule, self._schedule_key = None, key
        self._active = True
        self._learning = self.asynchronous and self._schedule is None
        self._event = 0
        self._last_event.clear()
        self._late.clear()

    def _on_accumulate(self, param: Tensor) -> None:
        if not self._active:
            return
        self._last_event[id(param)] = self._event
        if id(param) in self._done:
            self._late.append(self._names.get(id(param), "?"))

    def ready(self, params: Iterable[Tensor] = ()) -> None:
        """An event of the step's schedule (a block's or head's gradients are done): launch what is final now."""
        if not self._active:
            return
        if self.asynchronous and self._schedule is not None:
            event = self._event
            self.launch(p for p in self._params if self._schedule.get(id(p), -1) == event)
        self._event += 1

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
        """Reduce the rest of ``params``, wait for every bucket and write the averages into ``.grad``.

        Raises:
            RuntimeError: if a parameter received a gradient contribution after its all-reduce was launched.
        """
        late = sorted(set(self._late))
        if late:
            self.cancel()
            raise RuntimeError(
                f"Gradients of {', '.join(late[:5])}{' ...' if len(late) > 5 else ''} changed after their all-reduce "
                "started: the order in which blocks finish changed since the first step (a parameter shared by "
                "blocks, or used after the last block, contributed later than before). Averaging now would be wrong. "
                "HINT: pass overlap_communication=False to reduce every gradient after the step's last backward."
            )
        if self._learning:
            self._schedule = dict(self._last_event)
            self._learning = False
        self._active = False
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
        self._active = False
        self._late.clear()
