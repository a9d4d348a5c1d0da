"""The one table printer: Markdown and plain text, one cell per column."""

from __future__ import annotations

import pytest

from lightning_mpc.bench import MIB, Table, mib
from lightning_mpc.bench.table import optional


def _table() -> Table:
    table = Table(["method", "MiB", "x BP"])
    table.add("back-propagation", mib(3 * MIB), "1.00")
    table.add("MPC h=1", mib(MIB // 2), 0.5)
    return table


def test_markdown_is_padded_and_right_aligned_after_the_first_column() -> None:
    lines = _table().render(markdown=True).splitlines()
    assert lines == [
        "| method           |  MiB | x BP |",
        "|------------------|-----:|-----:|",
        "| back-propagation | 3.00 | 1.00 |",
        "| MPC h=1          | 0.50 |  0.5 |",
    ]


def test_plain_text_is_aligned_with_a_rule() -> None:
    lines = _table().render(markdown=False).splitlines()
    assert lines[0] == "method             MiB  x BP"
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])
    assert lines[3] == "MPC h=1           0.50   0.5"


def test_rows_need_one_cell_per_column_and_columns_can_be_read_back() -> None:
    table = _table()
    with pytest.raises(ValueError, match="HINT: give one cell per column"):
        table.add("only one")
    assert table.column("x BP") == ["1.00", "0.5"]


def test_missing_values_print_as_a_dash() -> None:
    assert mib(None) == "-" and optional(None) == "-" and optional(1.234, 1) == "1.2" and mib(1536 * 1024, 1) == "1.5"
