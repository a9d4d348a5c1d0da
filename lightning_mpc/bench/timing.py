"""Interleaved round-robin timing that survives a loaded machine.

The configurations take turns: every round measures each of them once (in order on even rounds, in reverse
on odd rounds, so that no configuration always runs right after the same one), and a configuration's time
ratio to the baseline is taken *within each round*, then summarised over the rounds by its median and
quartiles. A change of the machine's speed between rounds (other jobs starting or stopping) hits both sides
of a ratio alike. The baseline's own spread over the rounds shows how loaded the machine was: a run whose
slowest baseline measurement is more than :data:`NOISE_LIMIT` times its fastest is flagged.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["NOISE_LIMIT", "Clock", "Spread", "Timings", "interleaved_rounds", "spread", "time_call"]

Clock = Callable[[], float]
"""Seconds from an arbitrary origin (``time.perf_counter``, or a fake clock in tests)."""

NOISE_LIMIT = 1.5
"""A run is flagged as noisy when the baseline's slowest measurement exceeds this many times its fastest."""


def time_call(
    fn: Callable[[], object], *, clock: Clock = time.perf_counter, device: torch.device | None = None
) -> float:
    """Seconds of one call of ``fn``; on CUDA the device is synchronised before and after."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    fn()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


@dataclass(frozen=True)
class Spread:
    """A median with the quartiles around it.

    Attributes:
        median: the median.
        low: the first quartile (the value itself with fewer than two values).
        high: the third quartile.
    """

    median: float
    low: float
    high: float

    def format(self, digits: int = 2, scale: float = 1.0) -> str:
        """``"1.23 (1.10-1.40)"``: the median and the interquartile range, values multiplied by ``scale``."""
        m, lo, hi = (scale * v for v in (self.median, self.low, self.high))
        return f"{m:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def spread(values: list[float]) -> Spread:
    """The median and quartiles of ``values`` (inclusive method; NaN when empty)."""
    if not values:
        nan = float("nan")
        return Spread(nan, nan, nan)
    if len(values) == 1:
        return Spread(values[0], values[0], values[0])
    low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(median, low, high)


@dataclass
class Timings:
    """Seconds per configuration and round, from :func:`interleaved_rounds`.

    Attributes:
        seconds: per configuration label, one measurement per round.
        base: the label of the baseline (back-propagation).
        noise_limit: the baseline spread above which the run is flagged.
    """

    seconds: dict[str, list[float]]
    base: str
    noise_limit: float = NOISE_LIMIT
    orders: list[list[str]] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        """Completed rounds."""
        return len(self.seconds[self.base])

    def time(self, label: str) -> Spread:
        """Median and quartiles of a configuration's seconds over the rounds."""
        return spread(self.seconds[label])

    def ratio(self, label: str) -> Spread:
        """Median and quartiles over rounds of the configuration's time over the baseline's in the same round."""
        return spread([t / b for t, b in zip(self.seconds[label], self.seconds[self.base])])

    @property
    def base_variation(self) -> float:
        """The baseline's slowest measurement over its fastest (1.0 on a steady machine)."""
        values = self.seconds[self.base]
        return max(values) / min(values) if values and min(values) > 0 else float("nan")

    @property
    def noisy(self) -> bool:
        """Whether the baseline's own measurements varied by more than :attr:`noise_limit` times."""
        return self.base_variation > self.noise_limit

    def noise_note(self) -> str:
        """One line on the baseline's spread, flagged when the run was noisy."""
        values = self.seconds[self.base]
        text = (
            f"{self.base}'s {len(values)} timed rounds: {1e3 * min(values):.1f} to {1e3 * max(values):.1f} ms "
            f"(max/min {self.base_variation:.2f})"
        )
        if self.noisy:
            return (
                f"**NOISY RUN**: {text}, more than {self.noise_limit:g}x; the machine's load changed during the run, "
                "so read the time ratios with their quartiles, or run again on a quieter machine."
            )
        return f"{text}, within {self.noise_limit:g}x."


def interleaved_rounds(
    runs: Mapping[str, Callable[[], float]],
    rounds: int,
    *,
    base: str | None = None,
    noise_limit: float = NOISE_LIMIT,
    on_round: Callable[[int], None] | None = None,
) -> Timings:
    """Measure every configuration once per round, taking turns, for ``rounds`` rounds.

    Args:
        runs: per label, a callable that measures the configuration once and returns seconds (one step timed
            with :func:`time_call`, or the median step of a short training run).
        rounds: how many rounds (at least 1).
        base: the baseline's label (default: the first).
        noise_limit: see :attr:`Timings.noise_limit`.
        on_round: called with the round's index after each round (progress output).

    Raises:
        ValueError: for no configuration, fewer than one round, or an unknown baseline.
    """
    labels = list(runs)
    base = labels[0] if base is None and labels else base
    if not labels or rounds < 1 or base not in runs:
        raise ValueError(
            f"interleaved_rounds needs at least one configuration, one round and a known baseline; got "
            f"{labels}, rounds={rounds}, base={base!r}. HINT: pass rounds >= 1 and base among the labels."
        )
    timings = Timings({label: [] for label in labels}, base, noise_limit)
    for index in range(rounds):
        order = labels if index % 2 == 0 else labels[::-1]
        timings.orders.append(list(order))
        for label in order:
            timings.seconds[label].append(runs[label]())
        if on_round is not None:
            on_round(index)
    return timings
