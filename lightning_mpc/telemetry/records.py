"""Per-block figures of one training step, recorded from a rule's events.

:class:`StepRecorder` is an :class:`~lightning_mpc.core.observer.EngineObserver`: set it as a rule's
observer (``rule.observer = recorder``), attach it to a :class:`~lightning_mpc.HorizonEngine`
(``engine.observer = recorder``) or pass it to :func:`~lightning_mpc.horizon_backward` (``observer=recorder``).
After the step :attr:`StepRecorder.record` holds, per block, the local loss, the forward and backward time,
the real memory held while the block ran (allocator bytes, see :mod:`lightning_mpc.core.realmem`), optionally
the bytes saved for backward (a breakdown), and the rule's own signals. It keeps no graph alive: losses are
stored detached, everything else as Python numbers.

Example::

    recorder = StepRecorder()
    recorder.start_memory(device)
    horizon_backward(blocks, heads, x, y, F.cross_entropy, horizon=2, observer=recorder)
    recorder.stop_memory()
    print(recorder.record.memory_bytes, recorder.record.peak_memory_bytes)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_mpc.core.memory import SavedTensorMeter
from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.core.realmem import RealMemoryMeter, profiler_active

__all__ = ["PredictionHook", "StepRecord", "StepRecorder"]

PredictionHook = Callable[[int, Tensor], None]
"""Called with ``(block index, prediction)``: head ``k``'s prediction, or the model output for the last block."""


@dataclass
class StepRecord:
    """What one step measured, keyed by block index.

    Attributes:
        losses: the local loss of block ``k`` (MPC: head ``k``'s, ``l_{k+1}``), detached.
        forward_ms: block ``k``'s forward plus its local loss, in milliseconds.
        backward_ms: every backward the rule ran for block ``k`` (MPC: head ``k``'s loss and every
            vector-Jacobian product through block ``k``'s graph), in milliseconds.
        memory_bytes: real memory (allocator bytes above the step's start) at its peak while block ``k`` ran,
            from the start of its forward to the start of the next block's (for the last block, to the end of
            the step): its forward, its local loss and the backwards run meanwhile.
        peak_memory_bytes: the step's real peak above its start.
        saved_bytes: a breakdown, if asked for: bytes saved for backward held when block ``k``'s loss was
            back-propagated.
        peak_saved_bytes: the step's peak of bytes saved for backward (breakdown).
        signals: the rule's own measurements, by ``(name, block index or None)``.
        output_gradient: the final loss's gradient at the last block's output, if it was asked for.
        complete: whether the step ran to its end.
    """

    losses: dict[int, Tensor] = field(default_factory=dict)
    forward_ms: dict[int, float] = field(default_factory=dict)
    backward_ms: dict[int, float] = field(default_factory=dict)
    memory_bytes: dict[int, int] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    saved_bytes: dict[int, int] = field(default_factory=dict)
    peak_saved_bytes: int | None = None
    signals: dict[tuple[str, int | None], float | Tensor] = field(default_factory=dict)
    output_gradient: Tensor | None = None
    complete: bool = False


class StepRecorder(EngineObserver):
    """Records a :class:`StepRecord` per step from a rule's events.

    Args:
        timing: record forward and backward times (``time.perf_counter``; on CUDA the device is synchronised
            at every event, so switch it on only for the steps you measure).
        device: the training device (for CUDA synchronisation and memory).
        keep_output_gradient: keep the final loss's gradient at the last block's output in the record (what
            an alignment probe needs to replay back-propagation with the step's own loss).
        on_prediction: called with every local prediction and the model output while they are still attached
            to their graph; the hook must keep only detached results.
        last_block: the index of the last block (whose ``block_finished`` output is the model output).

    Attributes:
        record: the current (or last) step's record.
    """

    def __init__(
        self,
        *,
        timing: bool = True,
        device: torch.device | None = None,
        keep_output_gradient: bool = False,
        on_prediction: PredictionHook | None = None,
        last_block: int | None = None,
    ) -> None:
        self.timing = timing
        self.device = device
        self.keep_output_gradient = keep_output_gradient
        self.on_prediction = on_prediction
        self.last_block = last_block
        self.record = StepRecord()
        self._memory: RealMemoryMeter | None = None
        self._saved: SavedTensorMeter | None = None
        self._marked: list[int] = []
        self._forward_start: dict[int, float] = {}
        self._backward_start = 0.0

    # ------------------------------------------------------------ memory
    def start_memory(self, device: torch.device | None = None, *, saved_bytes: bool = False, exclude: Iterable[Tensor] = ()) -> None:
        """Start measuring real memory (and, with ``saved_bytes``, the bytes saved for backward as a breakdown).

        Call before the step's forward and end with :meth:`stop_memory`. ``exclude`` are tensors that are not
        activations (the parameters), for the saved-bytes breakdown.
        """
        if self._memory is not None:
            return
        self._marked = []
        meter = RealMemoryMeter(device if device is not None else (self.device or "cpu"))
        if meter.device.type == "cpu" and profiler_active():
            return  # the user is profiling: a nested session would corrupt theirs; no memory figures this step
        self._memory = meter
        meter.__enter__()
        if saved_bytes:
            self._saved = SavedTensorMeter(exclude=exclude)
            self._saved.__enter__()

    @property
    def measuring_memory(self) -> bool:
        """Whether a memory measurement is running."""
        return self._memory is not None

    def stop_memory(self) -> None:
        """Stop measuring; the figures go into :attr:`record`. Safe to call twice."""
        saved, self._saved = self._saved, None
        if saved is not None:
            saved.__exit__(None, None, None)
            self.record.peak_saved_bytes = saved.peak_bytes
        meter, self._memory = self._memory, None
        if meter is None:
            return
        meter.__exit__(None, None, None)
        result = meter.result
        if result is None:
            return
        self.record.peak_memory_bytes = result.peak_bytes
        for block, peak in zip(self._marked, result.interval_peaks):
            self.record.memory_bytes[block] = max(self.record.memory_bytes.get(block, 0), peak)

    def clear(self) -> None:
        """Forget the last record (drops its detached losses and output gradient)."""
        self.record = StepRecord()

    # ------------------------------------------------------------------ helpers
    def _now(self) -> float:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _begin_block(self, index: int) -> None:
        if self._memory is not None and (not self._marked or self._marked[-1] != index):
            self._memory.mark()
            self._marked.append(index)
        if self.timing and index not in self._forward_start:
            self._forward_start[index] = self._now()

    def _forward_done(self, index: int) -> None:
        start = self._forward_start.get(index)
        if self.timing and start is not None and index not in self.record.forward_ms:
            self.record.forward_ms[index] = 1000.0 * (self._now() - start)

    # ------------------------------------------------------------------- events
    def step_started(self) -> None:
        self.record = StepRecord()
        self._forward_start = {}
        if self._saved is not None:
            self._saved.reset_peak()

    def block_started(self, index: int) -> None:
        self._begin_block(index)

    def block_finished(self, index: int, output: Tensor) -> None:
        self._begin_block(index)  # rules that report no block_started
        if index == self.last_block:
            self._forward_done(index)
            if self.on_prediction is not None:
                self.on_prediction(index, output)

    def local_loss(self, index: int, prediction: Tensor, loss: Tensor) -> None:
        self.record.losses[index] = loss.detach()
        self._forward_done(index)
        if self._saved is not None:
            self.record.saved_bytes[index] = self._saved.current_bytes
        if self.on_prediction is not None:
            self.on_prediction(index, prediction)

    def backward_started(self, index: int) -> None:
        if self.timing:
            self._backward_start = self._now()

    def backward_finished(self, index: int) -> None:
        if self.timing:
            elapsed = 1000.0 * (self._now() - self._backward_start)
            self.record.backward_ms[index] = self.record.backward_ms.get(index, 0.0) + elapsed

    def output_gradient(self, grad: Tensor | None) -> None:
        if self._saved is not None and self.last_block is not None:
            self.record.saved_bytes[self.last_block] = self._saved.peak_bytes
        if self.keep_output_gradient and grad is not None:
            self.record.output_gradient = grad.detach()

    def signal(self, name: str, index: int | None, value: float | Tensor) -> None:
        self.record.signals[(name, index)] = value.detach() if isinstance(value, Tensor) else float(value)

    def step_completed(self) -> None:
        self.record.complete = True
