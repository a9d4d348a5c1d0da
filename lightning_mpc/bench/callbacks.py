"""Lightning callbacks that measure training steps: their wall time and their real memory."""

from __future__ import annotations

import statistics
import time
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.optim import Optimizer

from lightning_mpc.bench.memory import prepare_gradients
from lightning_mpc.core.realmem import RealMemoryMeter

__all__ = ["StepMemory", "StepTimer"]


class StepTimer(Callback):
    """Wall time of each training step.

    Args:
        skip: warm-up steps left out of :attr:`median_ms` and :attr:`mean_ms`.
        until: ``"end"``: from ``on_train_batch_start`` to ``on_train_batch_end``; ``"next"``: from one
            ``on_train_batch_start`` to the next (the last step ends at ``on_train_end``), which includes every
            callback and Lightning's writing of the logs.

    Attributes:
        times_s: every measured step, in seconds, warm-up included.
    """

    def __init__(self, skip: int = 5, until: Literal["end", "next"] = "end") -> None:
        if until not in ("end", "next"):
            raise ValueError(f"StepTimer(until={until!r}) must be 'end' or 'next'. HINT: pass until='end'.")
        self.skip = skip
        self.until = until
        self.times_s: list[float] = []
        self._start: float | None = None

    def _lap(self) -> None:
        if self._start is not None:
            self.times_s.append(time.perf_counter() - self._start)
            self._start = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.until == "next":
            self._lap()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.until == "end":
            self._lap()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lap()

    def measured(self) -> list[float]:
        """The steps after the warm-up (fewer skipped on tiny runs, so that one step is always left)."""
        return self.times_s[min(self.skip, max(len(self.times_s) - 1, 0)) :]

    @property
    def median_ms(self) -> float:
        """Median step time in milliseconds after the warm-up (NaN without steps)."""
        steps = self.measured()
        return 1000.0 * statistics.median(steps) if steps else float("nan")

    @property
    def mean_ms(self) -> float:
        """Mean step time in milliseconds after the warm-up (NaN without steps)."""
        steps = self.measured()
        return 1000.0 * statistics.fmean(steps) if steps else float("nan")


class StepMemory(Callback):
    """Real memory (allocator bytes) of one training step, gradients allocated beforehand and zeroed in place.

    At the start of training every optimizer's ``zero_grad`` is made to zero in place
    (``set_to_none=False``; given back at the end), and before the measured step every trainable parameter of
    the module (local heads included) gets a ``.grad``: no step pays for allocating gradients, as in
    :mod:`lightning_mpc.bench.memory`. The measurement (:class:`~lightning_mpc.core.realmem.RealMemoryMeter`
    on the module's device) runs from ``on_train_batch_start`` to ``on_before_optimizer_step``: the
    forward, every backward a rule runs inside ``training_step`` and Lightning's backward, not the
    optimizer's update (whose state the first step allocates).

    Args:
        measure_at: the training step measured, counted from 0 over the whole fit (the second by default, after
            the first step's one-off allocations); the last one if the fit has fewer.

    Attributes:
        peak_bytes: the measured peak, ``None`` until the step has ended.
        method: how it was measured (``"cpu-allocator-events"`` or ``"cuda-allocator"``).
    """

    def __init__(self, measure_at: int = 1) -> None:
        self.measure_at = measure_at
        self.peak_bytes: int | None = None
        self.method: str | None = None
        self._seen = 0
        self._target = measure_at
        self._meter: RealMemoryMeter | None = None
        self._patched: list[Optimizer] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen, self.peak_bytes, self.method = 0, None, None
        batches = trainer.num_training_batches
        total = batches * max(trainer.max_epochs or 1, 1) if isinstance(batches, int) else self.measure_at + 1
        if trainer.max_steps and trainer.max_steps > 0:
            total = min(total, trainer.max_steps)
        self._target = max(0, min(self.measure_at, total - 1))
        for optimizer in trainer.optimizers:
            original = optimizer.zero_grad

            def zero_in_place(set_to_none: bool = True, _original: Any = original) -> None:
                _original(set_to_none=False)

            optimizer.zero_grad = zero_in_place  # type: ignore[method-assign]
            self._patched.append(optimizer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._seen == self._target and self.peak_bytes is None:
            prepare_gradients([p for p in pl_module.parameters() if p.requires_grad])
            self._meter = RealMemoryMeter(pl_module.device)
            self._meter.__enter__()
        self._seen += 1

    def _stop(self) -> None:
        meter, self._meter = self._meter, None
        if meter is not None:
            meter.__exit__(None, None, None)
            if meter.result is not None:
                self.peak_bytes, self.method = meter.result.peak_bytes, meter.result.method

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        self._stop()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._stop()  # steps without an optimizer step (accumulation)

    def _restore(self) -> None:
        self._stop()
        for optimizer in self._patched:
            vars(optimizer).pop("zero_grad", None)
        self._patched = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
