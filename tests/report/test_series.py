"""The metric-name grammar ``<prefix>/block_<NN>/<name>``: discovery, patterns, summaries."""

from __future__ import annotations

import re

import pytest

from lightning_mpc.report.series import (
    SECTIONS,
    block_key,
    block_pattern,
    block_prefixes,
    blocks,
    chart_pattern,
    merge_rows,
    parse_block_key,
    series_names,
    summary_rows,
)
from lightning_mpc.telemetry import block_key as _telemetry_key


def telemetry_key(index: int, name: str) -> str:
    return _telemetry_key("mpc", index, name)


def test_block_key_round_trips_with_the_telemetry_names() -> None:
    assert block_key("mpc", 3, "loss") == telemetry_key(3, "loss") == "mpc/block_03/loss"
    assert parse_block_key("mpc/block_03/loss") == ("mpc", 3, "loss")
    assert parse_block_key("ff/block_12/goodness") == ("ff", 12, "goodness")
    for other in ("mpc/alignment", "mpc/charts/block_loss", "mpc/block_x/loss", "block_01/loss", "mpc/block_01/a/b"):
        assert parse_block_key(other) is None, other


def test_prefixes_blocks_and_names_are_discovered_not_listed() -> None:
    rows = [
        {"step": 0, "mpc/block_00/loss": 1.0, "mpc/block_01/loss": 2.0, "ff/block_00/goodness": 3.0},
        {"step": 1, "mpc/block_01/activation_bytes": 5.0, "mpc/block_01/novel_series": 1.0, "train_loss": 1.0},
    ]
    assert block_prefixes(rows) == ["mpc", "ff"]  # mpc first, then the others alphabetically
    assert blocks(rows, "mpc") == [0, 1] and blocks(rows, "ff") == [0]
    # known names in the dashboard's order, unknown ones after them
    assert series_names(rows, "mpc") == ["loss", "activation_bytes", "novel_series"]
    assert series_names(rows, "ff") == ["goodness"]


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.title)
def test_chart_patterns_select_exactly_their_series(section) -> None:  # type: ignore[no-untyped-def]
    for chart in section.charts:
        pattern = re.compile(chart_pattern("mpc", chart))
        for name in chart.names:
            for index in (0, 7, 12, 123):
                assert pattern.search(telemetry_key(index, name)), (chart.title, name)
            assert not pattern.search(telemetry_key(0, name + "_epoch"))
            assert not pattern.search(f"ff/block_00/{name}")  # another rule's series stay in its own chart
        for total in chart.totals:
            assert pattern.search(f"mpc/{total}") and not pattern.search(f"ff/{total}")
    assert re.fullmatch(block_pattern("a.b", "loss"), "a.b/block_01/loss")
    assert not re.fullmatch(block_pattern("a.b", "loss"), "axb/block_01/loss")  # the prefix is escaped


def test_rows_of_one_step_merge_and_summaries_take_last_or_mean() -> None:
    rows = merge_rows(
        [
            {"step": 1.0, "mpc/block_00/loss": 3.0, "mpc/block_00/forward_ms": 2.0},
            {"step": 0.0, "mpc/block_00/loss": 4.0, "mpc/block_00/forward_ms": 1.0, "mpc/block_01/loss": 9.0},
            {"step": 1.0, "train_loss": 0.5},
            {"epoch": 0.0},  # no step: dropped
        ]
    )
    assert [row["step"] for row in rows] == [0.0, 1.0]
    assert rows[1] == {"step": 1.0, "mpc/block_00/loss": 3.0, "mpc/block_00/forward_ms": 2.0, "train_loss": 0.5}
    columns, table = summary_rows(rows, "mpc")
    assert columns == ["block", "loss (last)", "forward_ms (mean)"]
    assert table == [[0.0, 3.0, 1.5], [1.0, 9.0, None]]
