"""Interleaved timing: round order, per-round ratios, their spread and the noise flag, with a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from lightning_mpc.bench import NOISE_LIMIT, Spread, interleaved_rounds, spread, time_call


def fake_clock(durations: list[float]) -> Callable[[], float]:
    """A clock whose consecutive start/stop pairs are ``durations`` apart."""
    ticks: Iterator[float] = iter([t for d in durations for t in (0.0, d)])
    return lambda: next(ticks)


def runs_from(seconds: dict[str, list[float]], log: list[str]) -> dict[str, Callable[[], float]]:
    """Configurations that take the given seconds, one value per call, timed with a fake clock."""
    clocks = {label: fake_clock(values) for label, values in seconds.items()}

    def run(label: str) -> float:
        log.append(label)
        return time_call(lambda: None, clock=clocks[label])

    return {label: (lambda label=label: run(label)) for label in seconds}


def test_time_call_reads_the_clock_around_the_call() -> None:
    calls: list[int] = []
    assert time_call(lambda: calls.append(1), clock=fake_clock([0.25])) == 0.25
    assert calls == [1]


def test_rounds_alternate_their_order_and_ratios_pair_by_round() -> None:
    log: list[str] = []
    # the machine slows down 3x in the second round: the ratio within each round stays 2
    seconds = {"bp": [1.0, 3.0, 1.0], "mpc": [2.0, 6.0, 2.0]}
    timings = interleaved_rounds(runs_from(seconds, log), 3)
    assert log == ["bp", "mpc", "mpc", "bp", "bp", "mpc"]
    assert timings.orders == [["bp", "mpc"], ["mpc", "bp"], ["bp", "mpc"]]
    assert timings.seconds == seconds and timings.rounds == 3
    assert timings.ratio("mpc") == Spread(2.0, 2.0, 2.0)
    assert timings.ratio("bp").median == 1.0
    assert timings.time("mpc").median == 2.0


def test_a_run_whose_baseline_varies_more_than_the_limit_is_flagged() -> None:
    steady = interleaved_rounds(runs_from({"bp": [1.0, 1.2, 1.4], "x": [1.0, 1.0, 1.0]}, []), 3)
    assert steady.base_variation == pytest.approx(1.4) and not steady.noisy
    assert "within 1.5x" in steady.noise_note() and "NOISY" not in steady.noise_note()
    loaded = interleaved_rounds(runs_from({"bp": [1.0, 1.6, 1.0], "x": [1.0, 1.0, 1.0]}, []), 3)
    assert loaded.base_variation == pytest.approx(1.6) and loaded.noisy
    assert loaded.noise_note().startswith("**NOISY RUN**") and "max/min 1.60" in loaded.noise_note()
    assert NOISE_LIMIT == 1.5
    # the baseline need not be the first configuration
    other = interleaved_rounds(runs_from({"x": [1.0, 1.0], "bp": [1.0, 2.0]}, []), 2, base="bp")
    assert other.noisy and other.ratio("x").median == pytest.approx(0.75)


def test_spread_is_the_median_and_quartiles() -> None:
    s = spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.median, s.low, s.high) == (3.0, 2.0, 4.0)
    assert s.format() == "3.00 (2.00-4.00)" and s.format(1, scale=1000) == "3000.0 (2000.0-4000.0)"
    assert spread([7.0]) == Spread(7.0, 7.0, 7.0)
    assert str(spread([]).median) == "nan"


@pytest.mark.parametrize("rounds, base", [(0, None), (2, "missing")])
def test_bad_rounds_or_baseline_are_refused(rounds: int, base: str | None) -> None:
    with pytest.raises(ValueError, match="HINT"):
        interleaved_rounds({"bp": lambda: 1.0}, rounds, base=base)
