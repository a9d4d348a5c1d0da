"""The two laws the horizon choice rests on, fitted to measurements.

- Alignment: ``1 - cos^2(theta_h) = c (1 - h/T)^p``. Ren & Li prove ``p = 3`` for deep linear networks
  near the identity; on other networks ``p`` is fitted as well as ``c``.
- Memory: ``M(h) = a h + b`` bytes of activations held for backward.

Both fits are ordinary least squares with numpy (the alignment law in log-log space); no SciPy needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["PAPER_EXPONENT", "AlignmentLaw", "MemoryLaw", "fit_alignment_law", "fit_memory_law"]

PAPER_EXPONENT = 3.0
"""The exponent of Ren & Li's deep-linear bound, used when the measurements cannot determine ``p``."""

_ZERO_MISALIGNMENT = 1e-12
"""``1 - cos^2`` at or below this is an exact alignment (float64 round-off), unusable in log space."""


@dataclass(frozen=True)
class AlignmentLaw:
    """``cos^2(theta_h) = 1 - c (1 - h/T)^p``, clipped to ``[0, 1]``; ``h >= T`` is exact (``1``).

    Attributes:
        coefficient: ``c`` (``>= 0``).
        exponent: ``p``.
        num_blocks: ``T``.
        num_points: how many measurements determined the fit (``h < T`` and ``1 - cos^2 > 0``):
            with 2 or more both ``c`` and ``p`` are fitted; with 1, ``p`` is the paper's 3 and ``c``
            passes through the point; with 0 (every measured horizon aligned exactly), ``c = 0``.
    """

    coefficient: float
    exponent: float
    num_blocks: int
    num_points: int

    @property
    def exponent_fitted(self) -> bool:
        """Whether ``p`` was fitted (2 or more usable points) rather than set to the paper's value."""
        return self.num_points >= 2

    def misalignment(self, horizon: float) -> float:
        """``1 - cos^2`` predicted at ``horizon`` (any real ``h >= 1``), in ``[0, 1]``."""
        distance = 1.0 - horizon / self.num_blocks
        if distance <= 0.0:
            return 0.0
        return min(max(self.coefficient * distance**self.exponent, 0.0), 1.0)

    def predict(self, horizon: float) -> float:
        """``cos^2`` predicted at ``horizon``, in ``[0, 1]``."""
        return 1.0 - self.misalignment(horizon)

    def describe(self) -> str:
        """The law as text, with where its exponent came from."""
        source = (
            f"fitted on {self.num_points} points"
            if self.exponent_fitted
            else f"p fixed to the paper's {PAPER_EXPONENT:g}: {self.num_points} usable point(s)"
        )
        return f"1 - cos^2 = {self.coefficient:.4g} (1 - h/{self.num_blocks})^{self.exponent:.3g} ({source})"


@dataclass(frozen=True)
class MemoryLaw:
    """``M(h) = a h + b`` bytes for ``1 <= h <= T``; ``h > T`` holds what ``h = T`` holds.

    Attributes:
        slope: ``a``, bytes per block of horizon.
        intercept: ``b``, bytes.
        num_blocks: ``T``.
    """

    slope: float
    intercept: float
    num_blocks: int

    def predict(self, horizon: float) -> float:
        """Predicted activation bytes at ``horizon`` (never negative)."""
        return max(self.slope * min(horizon, self.num_blocks) + self.intercept, 0.0)

    def describe(self) -> str:
        """The law as text."""
        from lightning_mpc.horizon.units import format_bytes

        sign = "+" if self.intercept >= 0 else "-"
        return f"M(h) = {format_bytes(self.slope)} * h {sign} {format_bytes(abs(self.intercept))}"


def fit_alignment_law(alignment: Mapping[int, float], num_blocks: int) -> AlignmentLaw:
    """Fit ``1 - cos^2 = c (1 - h/T)^p`` to measured ``cos^2`` values.

    Least squares of ``log(1 - cos^2) = log c + p log(1 - h/T)`` over the usable points: ``h < T``
    (at ``h >= T`` the update is back-propagation and ``1 - cos^2`` is 0 by definition) and
    ``1 - cos^2 > 1e-12`` (an exact alignment has no logarithm; dropping it rather than clipping keeps
    round-off from dragging the fit). With fewer than two usable points, or all at the same ``h``, the
    exponent cannot be determined: it is set to the paper's ``p = 3`` and ``c`` is the geometric-mean
    fit through the points; with none, ``c = 0`` (every measured horizon is exactly aligned).

    Args:
        alignment: measured ``cos^2`` per horizon.
        num_blocks: ``T``.

    Returns:
        The fitted law.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}. HINT: pass the number of blocks T.")
    xs: list[float] = []
    ys: list[float] = []
    for horizon, value in sorted(alignment.items()):
        if horizon >= num_blocks or not math.isfinite(value):
            continue
        misalignment = 1.0 - value
        if misalignment <= _ZERO_MISALIGNMENT:
            continue
        xs.append(math.log(1.0 - horizon / num_blocks))
        ys.append(math.log(misalignment))
    if not xs:
        return AlignmentLaw(0.0, PAPER_EXPONENT, num_blocks, 0)
    x = np.asarray(xs)
    y = np.asarray(ys)
    if len(xs) < 2 or np.ptp(x) == 0.0:
        log_c = float(np.mean(y - PAPER_EXPONENT * x))
        return AlignmentLaw(math.exp(log_c), PAPER_EXPONENT, num_blocks, len(xs))
    exponent, log_c = np.polyfit(x, y, 1)
    return AlignmentLaw(math.exp(float(log_c)), float(exponent), num_blocks, len(xs))


def fit_memory_law(memory: Mapping[int, float], num_blocks: int) -> MemoryLaw:
    """Fit ``M(h) = a h + b`` by least squares to measured bytes at ``h <= T``.

    With one measured horizon the law is flat (``a = 0``, ``b`` the measurement).

    Raises:
        ValueError: if no horizon was measured.
    """
    points = sorted((min(h, num_blocks), float(m)) for h, m in memory.items())
    if not points:
        raise ValueError("No memory measurements to fit. HINT: probe at least one horizon.")
    hs = np.asarray([h for h, _ in points], dtype=float)
    ms = np.asarray([m for _, m in points], dtype=float)
    if np.ptp(hs) == 0.0:
        return MemoryLaw(0.0, float(ms.mean()), num_blocks)
    slope, intercept = np.polyfit(hs, ms, 1)
    return MemoryLaw(float(slope), float(intercept), num_blocks)
