"""Running probes on a live model without disturbing it: gradients and random state put back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["RandomState", "forked_rng", "isolated_gradients", "module_devices"]


@contextlib.contextmanager
def isolated_gradients(parameters: Iterable[nn.Parameter]) -> Iterator[None]:
    """Give ``parameters`` empty ``.grad`` inside the block and their original ``.grad`` back on exit."""
    params = list(parameters)
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in zip(params, saved):
            p.grad = grad


def module_devices(modules: Iterable[nn.Module | None]) -> set[torch.device]:
    """Every device holding a parameter or buffer of ``modules``."""
    devices: set[torch.device] = set()
    for module in modules:
        if module is None:
            continue
        devices.update(t.device for t in module.parameters())
        devices.update(t.device for t in module.buffers())
    return devices


def _cuda_indices(devices: Iterable[torch.device | None]) -> list[int]:
    indices = {
        d.index if d.index is not None else torch.cuda.current_device()
        for d in devices
        if d is not None and d.type == "cuda"
    }
    return sorted(indices)


@contextlib.contextmanager
def forked_rng(devices: Iterable[torch.device | None] = ()) -> Iterator[None]:
    """Random draws inside the block leave the CPU generator and those of ``devices`` (CUDA) unchanged."""
    with torch.random.fork_rng(devices=_cuda_indices(devices)):
        yield


@dataclass(frozen=True)
class RandomState:
    """The CPU generator's state and the states of the CUDA devices in use, to replay random draws.

    Replaying the same state before two runs gives them the same dropout masks.
    """

    cpu: Tensor
    cuda: dict[int, Tensor] = field(default_factory=dict)

    @classmethod
    def capture(cls, devices: Iterable[torch.device | None] | torch.device | None = None) -> RandomState:
        """The current random state of the CPU and of the CUDA ``devices``."""
        if devices is None or isinstance(devices, torch.device):
            devices = [devices]
        return cls(torch.get_rng_state(), {i: torch.cuda.get_rng_state(i) for i in _cuda_indices(devices)})

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state, and put the generators back as they were on exit."""
        with torch.random.fork_rng(devices=sorted(self.cuda)):
            torch.set_rng_state(self.cpu)
            for index, state in self.cuda.items():
                torch.cuda.set_rng_state(state, index)
            yield
