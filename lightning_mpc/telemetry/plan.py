"""What telemetry measures at which optimizer step: a pure function of the step and the settings."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MeasurementPlan", "StepPlan"]


@dataclass(frozen=True)
class StepPlan:
    """What to do at one micro-batch.

    Attributes:
        measure: time every block, measure real memory and gradient norms, write the per-block series.
        align: also measure the alignment with back-propagation (one extra back-propagation).
    """

    measure: bool
    align: bool


@dataclass(frozen=True)
class MeasurementPlan:
    """When to measure.

    Per-block figures are measured and written on optimizer step ``1`` (so that every run, however short, has
    them), on every ``every``-th step, and on the run's last step when it is known; the alignment on every
    ``alignment_every``-th measured step counted the same way (``0``: never) and on step ``1`` if it is on.
    Micro-batches that accumulate are never measured: only the last one of a window is.

    Attributes:
        every: measure every this many optimizer steps (``>= 1``).
        alignment_every: measure the alignment every this many optimizer steps (``0``: never).
    """

    every: int
    alignment_every: int = 0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"MeasurementPlan.every must be >= 1, got {self.every}. HINT: pass a positive interval.")
        if self.alignment_every < 0:
            raise ValueError(
                f"MeasurementPlan.alignment_every must be >= 0, got {self.alignment_every}. HINT: 0 turns it off."
            )

    def at(self, step: int, *, accumulating: bool = False, last_step: int | None = None) -> StepPlan:
        """The plan for the micro-batch that ends optimizer step ``step`` (counted from 1).

        Args:
            step: the optimizer step this micro-batch belongs to (1 for the first).
            accumulating: whether the optimizer does not step after this micro-batch.
            last_step: the run's last optimizer step, when known (``max_steps`` or the estimated total).
        """
        if accumulating:
            return StepPlan(False, False)
        boundary = step == 1 or (last_step is not None and step == last_step)
        measure = boundary or step % self.every == 0
        align = self.alignment_every > 0 and (step == 1 or step % self.alignment_every == 0)
        return StepPlan(measure or align, align)
