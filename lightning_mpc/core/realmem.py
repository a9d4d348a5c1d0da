"""Real memory: the bytes the allocator hands out while a step runs.

The one measurement the project calls "memory". On CUDA it is the caching allocator's own count
(``torch.cuda.reset_peak_memory_stats`` and ``max_memory_allocated`` around the step). On CPU, PyTorch
keeps no running count, so the CPU allocator's events are recorded with ``torch.profiler``
(``profile_memory=True``): every allocation and free made while the step runs, in order; their running
sum is the memory the step holds at each moment, and its maximum is the step's peak above what was
allocated before it. The CPU allocator reports no event when the step frees a tensor allocated before
the measurement began, so on CPU the figure is the most bytes the step itself allocated and held at once
(an upper bound of the growth when the step also frees older tensors).

This counts everything the step allocates: block outputs and graph leaves still referenced, tensors
saved for backward, heads and their losses, gradient buffers and the backward's temporaries. The bytes
saved for backward (:class:`~lightning_mpc.core.memory.SavedTensorMeter`) are one part of it, a breakdown.

Example::

    with RealMemoryMeter() as meter:
        loss = horizon_backward(blocks, heads, x, y, F.cross_entropy, horizon=2)
    print(meter.peak_bytes)
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["MemoryPeak", "RealMemoryMeter", "measure_peak", "profiler_active"]

T = TypeVar("T")


@dataclass(frozen=True)
class MemoryPeak:
    """What the allocator held while a measured piece of code ran.

    Attributes:
        peak_bytes: the most bytes held at once above what was allocated when the measurement began.
        end_bytes: bytes allocated during the measurement and still held when it ended (on CUDA: the net
            change, negative if older tensors were freed).
        device: the device measured, ``"cpu"`` or ``"cuda:N"``.
        method: ``"cpu-allocator-events"`` (profiler memory events) or ``"cuda-allocator"``.
        interval_peaks: with :meth:`RealMemoryMeter.mark`: the peak (above the start) of each interval
            between consecutive marks, the last one running to the end of the measurement.
        interval_levels: with marks: the bytes held (above the start) when each interval began.
    """

    peak_bytes: int
    end_bytes: int
    device: str
    method: str
    interval_peaks: tuple[int, ...] = ()
    interval_levels: tuple[int, ...] = ()


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Hide the lines the profiler's native library prints to file descriptor 2 when it starts and stops."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # pragma: no cover - no real stderr (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profiler_active() -> bool:
    """Whether a torch.profiler (or autograd profiler) session is running in this process."""
    return bool(torch._C._autograd._profiler_enabled())


def _allocation_records(profiler: Any) -> list[tuple[int, int, int]] | None:
    """``(start_ns, address, signed bytes)`` of every CPU allocator event, or ``None`` if torch gives no addresses."""
    try:
        from torch._C._profiler import _EventType

        roots = profiler.profiler.kineto_results.experimental_event_tree()
    except (AttributeError, ImportError, RuntimeError):
        return None
    records = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag != _EventType.Allocation:
            continue
        fields = node.extra_fields
        if torch.device(fields.device).type == "cpu" and fields.alloc_size != 0:
            records.append((int(node.start_time_ns), int(fields.ptr), int(fields.alloc_size)))
    return records


def _cpu_memory_events(profiler: Any) -> list[tuple[int, int]]:
    """``(start_ns, signed bytes)`` of the CPU allocator events that belong to the measured code, in time order.

    A free of memory allocated before the measurement is left out: the profiler reports it with its size when an
    earlier profiled session allocated it, and counting it would lower the running sum by bytes the measured
    code never held (the figure would depend on what earlier measurements left alive).
    """
    records = _allocation_records(profiler)
    if records is None:  # no addresses: every event counts
        events = [
            (event.start_ns(), int(event.nbytes()))
            for event in profiler.profiler.kineto_results.events()
            if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
        ]
        return sorted(events, key=lambda item: item[0])
    live: set[int] = set()
    events = []
    for start_ns, address, nbytes in sorted(records, key=lambda item: item[0]):
        if nbytes > 0:
            live.add(address)
        elif address in live:
            live.discard(address)
        else:
            continue  # allocated before the measurement began
        events.append((start_ns, nbytes))
    return events


class RealMemoryMeter:
    """Context manager that measures the real peak of the code it wraps.

    Args:
        device: the device whose allocator to measure. Default: CUDA's current device when CUDA is
            initialised and in use, else the CPU. On CUDA the measurement resets the device's peak
            statistics (as ``torch.cuda.reset_peak_memory_stats`` does).

    Attributes:
        result: the :class:`MemoryPeak` once the context has exited; ``None`` before.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        if device is None:
            device = "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(
                f"RealMemoryMeter measures the CPU or a CUDA device, got {self.device}. "
                "HINT: pass device='cpu' or device='cuda:N'."
            )
        self.result: MemoryPeak | None = None
        self._profiler: Any = None
        self._cuda_start = 0
        self._marks: list[int] = []
        self._cuda_peaks: list[int] = []
        self._cuda_levels: list[int] = []

    def mark(self) -> None:
        """Start a new interval: :attr:`MemoryPeak.interval_peaks` gets one peak per interval between marks.

        On CUDA this synchronises the device and resets its peak statistics; on CPU it only notes the time.
        """
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if self._marks:
                self._cuda_peaks.append(torch.cuda.max_memory_allocated(self.device) - self._cuda_start)
            self._cuda_levels.append(torch.cuda.memory_allocated(self.device) - self._cuda_start)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._marks.append(time.time_ns())

    @property
    def peak_bytes(self) -> int:
        """The measured peak (raises if the context has not exited yet)."""
        if self.result is None:
            raise RuntimeError("RealMemoryMeter.peak_bytes read before the measured code finished. HINT: read it after the with block.")
        return self.result.peak_bytes

    def __enter__(self) -> RealMemoryMeter:
        self.result = None
        self._marks, self._cuda_peaks, self._cuda_levels = [], [], []
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_start = torch.cuda.memory_allocated(self.device)
            return self
        from torch.profiler import ProfilerActivity, profile

        if profiler_active():
            raise RuntimeError(
                "RealMemoryMeter cannot measure the CPU while another torch.profiler session is running (a profiler "
                "inside a profiler loses the outer session's events). HINT: measure outside your own profiling, or "
                "turn the telemetry's memory off (MPCTelemetry(memory=False)) while you profile."
            )
        self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _native_stderr_silenced():
            self._profiler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._cuda_start
            end = torch.cuda.memory_allocated(self.device) - self._cuda_start
            intervals = [*self._cuda_peaks, peak] if self._marks else []
            peak = max([peak, *intervals])
            self.result = MemoryPeak(
                max(peak, 0),
                end,
                str(self.device),
                "cuda-allocator",
                tuple(max(v, 0) for v in intervals),
                tuple(self._cuda_levels),
            )
            return
        profiler, self._profiler = self._profiler, None
        with _native_stderr_silenced():
            profiler.__exit__(*exc)
        if exc and exc[0] is not None:
            return
        current = peak = 0
        marks = self._marks
        intervals = [0] * len(marks)
        levels = [0] * len(marks)
        slot = -1
        for start_ns, nbytes in _cpu_memory_events(profiler):
            while slot + 1 < len(marks) and marks[slot + 1] <= start_ns:
                slot += 1
                intervals[slot] = levels[slot] = current  # the level held when the interval begins counts too
            current += nbytes
            peak = max(peak, current)
            if slot >= 0:
                intervals[slot] = max(intervals[slot], current)
        while slot + 1 < len(marks):
            slot += 1
            intervals[slot] = levels[slot] = current
        self.result = MemoryPeak(peak, current, "cpu", "cpu-allocator-events", tuple(intervals), tuple(levels))


def measure_peak(fn: Callable[..., T], *args: Any, device: torch.device | str | None = None, **kwargs: Any) -> tuple[T, MemoryPeak]:
    """Run ``fn(*args, **kwargs)`` under a :class:`RealMemoryMeter` and return its result and the peak.

    Args:
        fn: the code to measure (for example one training step).
        *args: its positional arguments.
        device: the allocator to measure (see :class:`RealMemoryMeter`).
        **kwargs: its keyword arguments.
    """
    meter = RealMemoryMeter(device)
    with meter:
        result = fn(*args, **kwargs)
    assert meter.result is not None
    return result, meter.result
