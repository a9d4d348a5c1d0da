"""Per-block figures of one training step, recorded from the engine's events.

:class:`StepRecorder` is an :class:`~lightning_mpc.core.observer.EngineObserver`: attach it to a
:class:`~lightning_mpc.HorizonEngine` (``engine.observer = recorder``) or pass it to
:func:`~lightning_mpc.horizon_backward` (``observer=recorder``), and after the step
:attr:`StepRecorder.record` holds, per block, the local loss, the forward and backward time and the
activation bytes held for the block's window. It keeps no graph alive: losses are stored detached,
everything else as Python numbers.

Example::

    recorder = StepRecorder(len(blocks))
    with recorder.measure_memory(exclude=model.parameters()):
        horizon_backward(blocks, heads, x, y, F.cross_entropy, horizon=2, observer=recorder)
    print(recorder.record.activation_bytes, recorder.record.peak_activation_bytes)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_mpc.core.memory import SavedTensorMeter
from lightning_mpc.core.observer import EngineObserver

__all__ = ["PredictionHook", "StepRecord", "StepRecorder"]

PredictionHook = Callable[[int, Tensor], None]
"""Called with ``(block index, prediction)``: head ``k``'s prediction, or the model output for the last block."""


@dataclass
class StepRecord:
    """What one step measured, one entry per block ``0..T-1``.

    Attributes:
        num_blocks: ``T``.
        losses: the local loss of head ``k`` (``l_{k+1}``), detached; ``None`` for the last block (its loss
            is the caller's final loss, which the engine does not see) and for blocks that did not run.
        forward_ms: block ``k``'s forward plus head ``k``'s forward and loss, in milliseconds.
        backward_ms: head ``k``'s loss backward plus every vector-Jacobian product through block ``k``'s
            graph (one per loss that reaches back through it), in milliseconds.
        activation_bytes: bytes saved for backward (device-independent, see
            :class:`~lightning_mpc.SavedTensorMeter`) held while block ``k``'s loss is back-propagated: the
            graphs of the window of blocks that loss trains, plus head ``k`` and its loss (the final loss
            for the last block). ``None`` unless memory was measured.
        cuda_peak_bytes: ``torch.cuda.max_memory_allocated`` from block ``k``'s start to block ``k + 1``'s
            (to the end of the step for the last block); ``None`` unless the device is CUDA.
        peak_activation_bytes: the step's peak of bytes saved for backward.
        cuda_peak_step_bytes: the largest of :attr:`cuda_peak_bytes`.
        output_gradient: the final loss's gradient at the last block's output, if it was asked for.
        complete: whether the step ran to its end (every window closed).
    """

    num_blocks: int
    losses: list[Tensor | None] = field(default_factory=list)
    forward_ms: list[float | None] = field(default_factory=list)
    backward_ms: list[float] = field(default_factory=list)
    activation_bytes: list[int | None] = field(default_factory=list)
    cuda_peak_bytes: list[int | None] = field(default_factory=list)
    peak_activation_bytes: int | None = None
    cuda_peak_step_bytes: int | None = None
    output_gradient: Tensor | None = None
    complete: bool = False

    @classmethod
    def empty(cls, num_blocks: int) -> StepRecord:
        """A record with every entry unset."""
        return cls(
            num_blocks=num_blocks,
            losses=[None] * num_blocks,
            forward_ms=[None] * num_blocks,
            backward_ms=[0.0] * num_blocks,
            activation_bytes=[None] * num_blocks,
            cuda_peak_bytes=[None] * num_blocks,
        )


class StepRecorder(EngineObserver):
    """Records a :class:`StepRecord` per step from the engine's events.

    Args:
        num_blocks: ``T``, the number of blocks of the engine it observes.
        timing: record forward and backward times (``time.perf_counter``).
        device: the training device. On CUDA, timing synchronises the device at every event and the
            per-block CUDA memory peaks are recorded (which resets CUDA's peak statistics at every block).
            Only switch these on for the steps you measure.
        keep_output_gradient: keep the final loss's gradient at the last block's output in the record
            (what an alignment probe needs to replay back-propagation with the step's own loss).
        on_prediction: called with every head's prediction and the model output while they are still
            attached to their graph; the hook must keep only detached results.

    Attributes:
        record: the current (or last) step's record.
        meter: the memory meter while :meth:`measure_memory` (or :meth:`start_memory`) is active.
    """

    def __init__(
        self,
        num_blocks: int,
        *,
        timing: bool = True,
        device: torch.device | None = None,
        keep_output_gradient: bool = False,
        on_prediction: PredictionHook | None = None,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"StepRecorder needs num_blocks >= 1, got {num_blocks}. HINT: pass len(blocks).")
        self.num_blocks = num_blocks
        self.timing = timing
        self.device = device
        self.keep_output_gradient = keep_output_gradient
        self.on_prediction = on_prediction
        self.record = StepRecord.empty(num_blocks)
        self.meter: SavedTensorMeter | None = None
        self._forward_start: list[float | None] = [None] * num_blocks
        self._backward_start = 0.0
        self._peak = 0
        self._cuda_block: int | None = None

    # ------------------------------------------------------------ configuration
    @property
    def _cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def start_memory(self, exclude: Iterable[Tensor] = ()) -> None:
        """Start counting bytes saved for backward (enter a :class:`~lightning_mpc.SavedTensorMeter`).

        Must be called before the step's forward and ended with :meth:`stop_memory` (contexts of
        ``saved_tensors_hooks`` nest: end them in the reverse order they were started).
        """
        if self.meter is not None:
            return
        meter = SavedTensorMeter(exclude=exclude)
        meter.__enter__()
        self.meter = meter

    def stop_memory(self) -> None:
        """Stop counting; the figures recorded so far stay in :attr:`record`. Safe to call twice."""
        meter, self.meter = self.meter, None
        if meter is not None:
            meter.__exit__(None, None, None)

    @contextlib.contextmanager
    def measure_memory(self, exclude: Iterable[Tensor] = ()) -> Iterator[StepRecorder]:
        """Context manager around a step: :meth:`start_memory` on entry, :meth:`stop_memory` on exit."""
        self.start_memory(exclude)
        try:
            yield self
        finally:
            self.stop_memory()

    def clear(self) -> None:
        """Forget the last record (drops its detached losses and output gradient)."""
        self.record = StepRecord.empty(self.num_blocks)

    # ------------------------------------------------------------------ helpers
    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _close_cuda_block(self) -> None:
        if self._cuda_block is None:
            return
        peak = int(torch.cuda.max_memory_allocated(self.device))
        self.record.cuda_peak_bytes[self._cuda_block] = peak
        previous = self.record.cuda_peak_step_bytes
        self.record.cuda_peak_step_bytes = peak if previous is None else max(previous, peak)
        self._cuda_block = None

    # ------------------------------------------------------------------- events
    def step_started(self) -> None:
        self.record = StepRecord.empty(self.num_blocks)
        self._forward_start = [None] * self.num_blocks
        self._cuda_block = None
        if self.meter is not None:
            self.meter.reset_peak()
            self._peak = self.meter.current_bytes

    def block_started(self, index: int) -> None:
        if self._cuda:
            self._close_cuda_block()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_block = index
        if self.timing:
            self._forward_start[index] = self._now()

    def block_finished(self, index: int, output: Tensor) -> None:
        last = index == self.num_blocks - 1
        if last:
            if self.timing:
                start = self._forward_start[index]
                if start is not None:
                    self.record.forward_ms[index] = 1000.0 * (self._now() - start)
            if self.meter is not None:
                # From here to the final loss's gradient: the last window plus the final loss's graph.
                self._peak = max(self._peak, self.meter.peak_bytes)
                self.meter.reset_peak()
            if self.on_prediction is not None:
                self.on_prediction(index, output)

    def local_loss(self, index: int, prediction: Tensor, loss: Tensor) -> None:
        self.record.losses[index] = loss.detach()
        if self.timing:
            start = self._forward_start[index]
            if start is not None:
                self.record.forward_ms[index] = 1000.0 * (self._now() - start)
        if self.meter is not None:
            # Before this loss's backward: the graphs of its window, head index and the loss itself.
            self.record.activation_bytes[index] = self.meter.current_bytes
        if self.on_prediction is not None:
            self.on_prediction(index, prediction)

    def backward_started(self, index: int) -> None:
        if self.timing:
            self._backward_start = self._now()

    def backward_finished(self, index: int) -> None:
        if self.timing:
            self.record.backward_ms[index] += 1000.0 * (self._now() - self._backward_start)

    def output_gradient(self, grad: Tensor | None) -> None:
        last = self.num_blocks - 1
        if self.meter is not None:
            self.record.activation_bytes[last] = self.meter.peak_bytes
        if self.keep_output_gradient and grad is not None:
            self.record.output_gradient = grad.detach()

    def step_completed(self) -> None:
        if self.meter is not None:
            self._peak = max(self._peak, self.meter.peak_bytes)
            self.record.peak_activation_bytes = self._peak
        if self._cuda:
            self._close_cuda_block()
        self.record.complete = True
