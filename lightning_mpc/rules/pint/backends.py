"""Where the slabs run: one after the other in this process, or one per process on torch.distributed.

A backend runs one correction sweep (every slab's fine forward and backward from its predicted boundary
values) and hands every process every slab's boundary results, so that each process can apply the same
serial coarse update. At the end of the step it makes each slab's gradients (and buffers) equal, on every
process, to those of the process that computed them.

* :class:`SequentialSlabs`: the slabs one after the other (tests, one device).
* :class:`DistributedSlabs`: slab ``s`` on rank ``s`` of a torch.distributed process group (gloo on CPU,
  NCCL on GPU), with ``all_gather`` for the boundary values and one ``all_reduce`` for the gradients. The
  process group is Lightning's (``Trainer(strategy="pint", devices=K)``) or one you initialise yourself.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistributedSlabs", "SequentialSlabs", "SlabBackend", "SlabOutput", "SlabTime"]


@dataclass
class SlabTime:
    """When a slab's fine pass ran, and what it cost.

    Attributes:
        sweep: the correction sweep, from 1.
        slab: the slab index.
        start: when the fine forward began (wall clock, ``time.time()``: comparable across processes).
        end: when the fine backward returned (wall clock).
        cpu: the CPU seconds of this process during the pass (``time.process_time()``): what the pass cost,
            whatever else the machine ran meanwhile.
        rank: the process that ran it.
    """

    sweep: int
    slab: int
    start: float
    end: float
    cpu: float = 0.0
    rank: int = 0

    @property
    def seconds(self) -> float:
        """How long the fine forward and backward took."""
        return self.end - self.start


@dataclass
class SlabOutput:
    """What one slab's fine pass gives.

    Attributes:
        output: the state at the slab's output, ``F_s(X_s)`` (detached).
        costate: the co-state at the slab's input, ``F_s'(X_s)^T R_s`` (detached).
        terminal_costate: the last slab only: the loss's gradient at its own output (else ``None``).
        loss: the last slab only: the loss on its own output, unscaled (else ``None``).
        gradients: the gradients of the slab's parameters (and of the head's, for the last slab); only on the
            process that computed them.
        time: when it ran.
    """

    output: Tensor
    costate: Tensor
    terminal_costate: Tensor | None = None
    loss: Tensor | None = None
    gradients: list[Tensor] | None = None
    time: SlabTime | None = field(default=None)


SlabRun = Callable[[int], SlabOutput]


class SlabBackend(ABC):
    """Runs the slabs of one correction sweep and shares their results."""

    rank: int = 0

    @abstractmethod
    def owns(self, slab: int) -> bool:
        """Whether this process runs ``slab``."""

    @abstractmethod
    def check(self, slabs: int) -> None:
        """Raise a ``ValueError`` with a HINT if the backend cannot run ``slabs`` slabs."""

    @abstractmethod
    def sweep(self, run: SlabRun, slabs: int) -> list[SlabOutput]:
        """Run ``run(s)`` for the slabs this process owns; every slab's boundary results, on every process."""

    @abstractmethod
    def share(self, tensors: Sequence[Tensor], owners: Sequence[int]) -> None:
        """Overwrite every ``tensors[i]``, in place, with the value it has on process ``owners[i]``."""

    def check_same(self, tensors: Sequence[Tensor], what: str) -> None:
        """Raise a ``RuntimeError`` with a HINT if the processes hold different ``tensors`` (no-op on one process)."""


class SequentialSlabs(SlabBackend):
    """Every slab in this process, one after the other."""

    def owns(self, slab: int) -> bool:
        return True

    def check(self, slabs: int) -> None:
        pass

    def sweep(self, run: SlabRun, slabs: int) -> list[SlabOutput]:
        return [run(s) for s in range(slabs)]

    def share(self, tensors: Sequence[Tensor], owners: Sequence[int]) -> None:
        pass


def _fingerprint(tensors: Sequence[Tensor]) -> Tensor:
    values = []
    for tensor in tensors:
        t = tensor.detach().double()
        values += [float(tensor.numel()), float(t.sum()), float((t * t).sum())]
    device = tensors[0].device if tensors else torch.device("cpu")
    return torch.tensor(values, dtype=torch.float64, device=device)


class DistributedSlabs(SlabBackend):
    """Slab ``s`` on rank ``s`` of a torch.distributed process group; as many processes as slabs.

    Args:
        group: the process group (default: the world).

    Raises:
        RuntimeError: if torch.distributed is not initialised.
    """

    def __init__(self, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "DistributedSlabs needs an initialised torch.distributed process group. HINT: train with "
                "Trainer(strategy='pint', devices=K), or call torch.distributed.init_process_group first; "
                "use SequentialSlabs on one process."
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def owns(self, slab: int) -> bool:
        return slab == self.rank

    def check(self, slabs: int) -> None:
        if slabs != self.world_size:
            raise ValueError(
                f"The multi-process backend runs one slab per process, but {slabs} slabs were asked of "
                f"{self.world_size} processes. HINT: pass slabs={self.world_size} (or leave it unset), or train "
                f"with devices={slabs}."
            )

    def sweep(self, run: SlabRun, slabs: int) -> list[SlabOutput]:
        mine = run(self.rank)
        state = mine.output
        zeros = torch.zeros_like(state)
        terminal = mine.terminal_costate if mine.terminal_costate is not None else zeros
        loss = (mine.loss if mine.loss is not None else torch.zeros((), device=state.device)).to(state.dtype)
        parts = [state, mine.costate.to(state.dtype), terminal.to(state.dtype), loss.view(1)]
        packed = torch.cat([part.flatten() for part in parts])
        gathered = [torch.empty_like(packed) for _ in range(self.world_size)]
        dist.all_gather(gathered, packed, group=self.group)
        n = state.numel()
        outputs = []
        for s, flat in enumerate(gathered):
            if s == self.rank:
                outputs.append(mine)
                continue
            last = s == slabs - 1
            outputs.append(
                SlabOutput(
                    output=flat[:n].view_as(state),
                    costate=flat[n : 2 * n].view_as(state),
                    terminal_costate=flat[2 * n : 3 * n].view_as(state) if last else None,
                    loss=flat[3 * n] if last else None,
                )
            )
        return outputs

    def share(self, tensors: Sequence[Tensor], owners: Sequence[int]) -> None:
        by_dtype: dict[torch.dtype, list[tuple[Tensor, int]]] = {}
        for tensor, owner in zip(tensors, owners):
            by_dtype.setdefault(tensor.dtype, []).append((tensor, owner))
        for entries in by_dtype.values():
            # Non-owners contribute zeros, so the sum is the owner's value exactly (x + 0 == x).
            flat = torch.cat([(t.detach() if o == self.rank else torch.zeros_like(t)).flatten() for t, o in entries])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            offset = 0
            with torch.no_grad():
                for tensor, _ in entries:
                    tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                    offset += tensor.numel()

    def check_same(self, tensors: Sequence[Tensor], what: str) -> None:
        local = _fingerprint(tensors)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local, group=self.group)
        differ = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
        if differ:
            raise RuntimeError(
                f"The processes of the parallel-in-time strategy received different {what} (ranks {differ} differ from "
                "rank 0): every process must see the same batch, since the slabs split the network, not the data. "
                "HINT: keep Trainer(use_distributed_sampler=True) (the strategy then gives every process every batch), "
                "or use the same deterministic sampler on every process."
            )


def now() -> tuple[float, float]:
    """Wall-clock seconds (comparable across the processes of one machine) and this process's CPU seconds."""
    return time.time(), time.process_time()
