"""The fitted laws recover known parameters and degrade as documented when the points run out."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_mpc.horizon.laws import PAPER_EXPONENT, fit_alignment_law, fit_memory_law


def _alignment(c: float, p: float, T: int, horizons: list[int]) -> dict[int, float]:
    return {h: 1.0 - c * (1.0 - h / T) ** p for h in horizons}


@settings(max_examples=40, deadline=None)
@given(
    c=st.floats(0.01, 1.0),
    p=st.floats(0.5, 6.0),
    T=st.integers(4, 64),
)
def test_alignment_law_recovers_c_and_p(c: float, p: float, T: int) -> None:
    horizons = sorted({1, 2, T // 2, T - 1, T})
    points = _alignment(c, p, T, horizons)
    law = fit_alignment_law(points, T)
    # Points whose misalignment is numerically zero (below 1e-12) carry no logarithm and are left out.
    assert law.num_points == len([h for h in horizons if h < T and 1.0 - points[h] > 1e-12])
    assert law.exponent_fitted
    # 1 - cos^2 near h = T is tiny (down to 1e-10 here): float64 round-off of cos^2 limits the recovery.
    assert law.exponent == pytest.approx(p, rel=1e-5)
    assert law.coefficient == pytest.approx(c, rel=1e-5)
    for h in range(1, T + 1):
        assert law.predict(h) == pytest.approx(1.0 - c * (1.0 - h / T) ** p, abs=1e-6)


def test_alignment_law_ignores_exact_zeros_and_back_propagation() -> None:
    T = 16
    points = _alignment(0.5, 2.0, T, [1, 2, 4, 8])
    points[12] = 1.0  # exact alignment below T: no logarithm, left out
    points[16] = 1.0  # h = T is back-propagation
    law = fit_alignment_law(points, T)
    assert law.num_points == 4
    assert law.exponent == pytest.approx(2.0)
    assert law.coefficient == pytest.approx(0.5)
    assert law.predict(T) == 1.0 and law.predict(40) == 1.0


def test_alignment_law_with_one_point_uses_the_papers_exponent() -> None:
    law = fit_alignment_law({2: 0.8, 8: 1.0}, 8)
    assert law.num_points == 1 and not law.exponent_fitted
    assert law.exponent == PAPER_EXPONENT
    assert law.predict(2) == pytest.approx(0.8)  # passes through the point
    assert law.coefficient == pytest.approx(0.2 / 0.75**3)
    assert "paper" in law.describe()


def test_alignment_law_with_no_usable_point_predicts_exact_alignment() -> None:
    law = fit_alignment_law({1: 1.0, 4: 1.0}, 4)
    assert law.num_points == 0 and law.coefficient == 0.0
    assert all(law.predict(h) == 1.0 for h in range(1, 5))


def test_alignment_prediction_is_clipped_to_the_unit_interval() -> None:
    law = fit_alignment_law({1: 0.0, 2: 0.5}, 4)  # steep: extrapolation to h < 1 would leave [0, 1]
    assert all(0.0 <= law.predict(h / 4) <= 1.0 for h in range(1, 17))


@settings(max_examples=30, deadline=None)
@given(a=st.floats(0.0, 1e6), b=st.floats(0.0, 1e7), T=st.integers(2, 50))
def test_memory_law_recovers_slope_and_intercept(a: float, b: float, T: int) -> None:
    law = fit_memory_law({h: a * h + b for h in (1, 2, T)}, T)
    assert law.slope == pytest.approx(a, rel=1e-6, abs=1e-6)
    assert law.intercept == pytest.approx(b, rel=1e-6, abs=1e-3)
    assert law.predict(T + 10) == pytest.approx(law.predict(T))  # beyond T is back-propagation


def test_memory_law_least_squares_and_single_point() -> None:
    law = fit_memory_law({1: 10.0, 2: 21.0, 3: 29.0}, 3)
    assert law.slope == pytest.approx(9.5) and law.intercept == pytest.approx(1.0)  # by hand: 19/2 and 20 - 2 * 9.5
    flat = fit_memory_law({4: 1234.0}, 4)
    assert flat.slope == 0.0 and flat.predict(1) == 1234.0
    with pytest.raises(ValueError, match="HINT"):
        fit_memory_law({}, 4)


def test_alignment_law_is_finite_for_noisy_points() -> None:
    law = fit_alignment_law({1: 0.3, 2: 0.62, 3: 0.61, 4: 0.95, 6: 0.999}, 8)
    assert math.isfinite(law.exponent) and math.isfinite(law.coefficient)
