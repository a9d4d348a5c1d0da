"""Smoke run of ``benchmarks/tp_vs_bptt.py`` on a tiny budget: it trains every method, times them, writes the page."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    return load_script("benchmarks/tp_vs_bptt.py")


def test_tiny_run_writes_the_page_and_the_plot(benchmark: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "rules"
    summary = benchmark.main(
        [
            "--steps", "6", "--search-steps", "4", "--eval-every", "3", "--search-eval-every", "2",
            "--eval-size", "16", "--batch", "4", "--tp-lrs", "0.1", "--bptt-lrs", "1e-3",
            "--lengths", "10,20", "--widths", "8,16", "--batches", "8", "--timing-rounds", "1",
            "--timing-repeats", "1", "--out", str(out),
        ]
    )  # fmt: skip
    page = (out / "tp_vs_bptt.md").read_text(encoding="utf-8")
    assert (tmp_path / "docs" / "img" / "tp_vs_bptt.png").stat().st_size > 10_000
    assert "](../img/tp_vs_bptt.png)" in page
    for heading in ("## Temporal order, length 60", "## Adding, length 30", "## Time per iteration"):
        assert heading in page
    for result in summary["results"]:
        methods = {curve.method for curve in result.final}
        assert methods == {"TP (unrolled)", "TP (local)", "BPTT"}
        for curve in result.final:
            assert curve.iterations == [0, 3, 6]
    for timing in [*summary["timings"]["length"], *summary["timings"]["width"], *summary["batches"]]:
        assert timing.ratio["BPTT"] == 1.0 and timing.ms["TP (unrolled)"] > 0


def test_the_gru_option_trains_and_times_an_unrolled_gru(benchmark: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "rules"
    summary = benchmark.main(
        [
            "--cell", "gru", "--tasks", "temporal_order", "--steps", "4", "--search-steps", "2", "--eval-every", "2",
            "--search-eval-every", "2", "--eval-size", "8", "--batch", "4", "--tp-lrs", "0.1", "--bptt-lrs", "1e-3",
            "--lengths", "10", "--widths", "8", "--batches", "4", "--timing-rounds", "1", "--timing-repeats", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    page = (out / "tp_vs_bptt.md").read_text(encoding="utf-8")
    assert "unrolled GRU of width 100" in page and "cell='gru'" in page
    for parts in summary["parts"].values():  # a GRU factorises per time step, inside the propagation
        assert parts["factorisation"] < parts["propagation"]
    for timing in summary["timings"]["length"]:
        assert timing.ms["TP (unrolled)"] > 0 and timing.ms["TP (local)"] > 0
