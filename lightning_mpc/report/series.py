"""The per-block metric names, read back: ``<prefix>/block_<NN>/<name>``, found by pattern, never hard-coded.

Every credit-assignment rule logs its per-block series under its own prefix (``mpc/block_03/loss``,
``ff/block_00/goodness``, ...) and its whole-network figures as ``<prefix>/<name>``
(``mpc/alignment``). The report, the W&B view and the TensorBoard layout all read the same grammar and
the same chart families (:data:`SECTIONS`), so that a series a rule adds shows up everywhere at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lightning_mpc.telemetry.session import block_key

__all__ = [
    "BLOCK_KEY",
    "SECTIONS",
    "STEP",
    "Chart",
    "Section",
    "block_key",
    "block_pattern",
    "block_prefixes",
    "blocks",
    "chart_pattern",
    "mean",
    "merge_rows",
    "parse_block_key",
    "series",
    "series_names",
    "summary_rows",
]

STEP = "step"
"""The x-axis of every row: Lightning's global step (``trainer/global_step`` in W&B)."""
BLOCK_KEY = re.compile(r"^(?P<prefix>[^/]+)/block_(?P<index>[0-9]+)/(?P<name>[^/]+)$")
"""``<prefix>/block_<NN>/<name>``: one series of one block."""

Row = Mapping[str, float]


@dataclass(frozen=True)
class Chart:
    """One chart: the per-block series ``names`` (one line per block) and the prefix-wide ``totals``.

    Attributes:
        title: the chart's title.
        names: per-block series names (``"loss"`` reads ``<prefix>/block_NN/loss``).
        totals: whole-network series drawn with the blocks (``"alignment"`` reads ``<prefix>/alignment``).
        log_y: a logarithmic y-axis (losses).
    """

    title: str
    names: tuple[str, ...]
    totals: tuple[str, ...] = ()
    log_y: bool = False


@dataclass(frozen=True)
class Section:
    """A group of charts: one W&B workspace section, one TensorBoard custom-scalars category."""

    title: str
    charts: tuple[Chart, ...]


SECTIONS: tuple[Section, ...] = (
    Section(
        "Per-block loss",
        (Chart("loss", ("loss",), log_y=True), Chart("accuracy", ("accuracy",))),
    ),
    Section(
        "Memory",
        (
            Chart("activation bytes", ("activation_bytes",), ("peak_activation_bytes", "backprop_activation_bytes")),
            Chart("activation ratio to back-propagation", (), ("activation_ratio",)),
            Chart("CUDA peak bytes", ("cuda_peak_bytes",)),
        ),
    ),
    Section(
        "Alignment",
        (
            Chart("alignment with the true gradient", ("alignment",), ("alignment",)),
            Chart("gradient norm", ("grad_norm",)),
        ),
    ),
    Section("Time", (Chart("forward ms", ("forward_ms",)), Chart("backward ms", ("backward_ms",)))),
)
"""The dashboard's sections, in order: what the figure, the W&B view and the TensorBoard layout show."""

_LAST = ("loss", "accuracy")
"""Series whose summary is their last value (the others: their mean over the measured steps)."""


def parse_block_key(key: str) -> tuple[str, int, str] | None:
    """``"mpc/block_03/loss"`` -> ``("mpc", 3, "loss")``; ``None`` for any other name."""
    match = BLOCK_KEY.match(key)
    return None if match is None else (match["prefix"], int(match["index"]), match["name"])


def block_pattern(prefix: str, name: str) -> str:
    """A regular expression for ``name`` of every block: ``^mpc/block_[0-9]+/loss$``.

    Written with ``[0-9]`` rather than ``\\d`` so that W&B's and TensorBoard's regex engines read it alike.
    """
    return f"^{re.escape(prefix)}/block_[0-9]+/{re.escape(name)}$"


def chart_pattern(prefix: str, chart: Chart) -> str:
    """One regular expression for every series of ``chart``: its per-block series and its totals.

    ``chart_pattern("mpc", alignment_chart) == "^mpc/block_[0-9]+/alignment$|^mpc/alignment$"``.
    """
    totals = [f"^{re.escape(prefix)}/{re.escape(name)}$" for name in chart.totals]
    return "|".join([block_pattern(prefix, name) for name in chart.names] + totals)


def _keys(rows: Iterable[Row]) -> set[str]:
    return {key for row in rows for key in row}


def block_prefixes(rows: Iterable[Row]) -> list[str]:
    """The prefixes that have per-block series, ``mpc`` first when present, then alphabetically."""
    found = {parsed[0] for key in _keys(rows) if (parsed := parse_block_key(key))}
    return sorted(found, key=lambda prefix: (prefix != "mpc", prefix))


def blocks(rows: Iterable[Row], prefix: str) -> list[int]:
    """The block indices with at least one series under ``prefix``."""
    return sorted({p[1] for key in _keys(rows) if (p := parse_block_key(key)) and p[0] == prefix})


def series_names(rows: Iterable[Row], prefix: str) -> list[str]:
    """The per-block series names under ``prefix``, in :data:`SECTIONS` order, then the others alphabetically."""
    found = {p[2] for key in _keys(rows) if (p := parse_block_key(key)) and p[0] == prefix}
    known = [name for section in SECTIONS for chart in section.charts for name in chart.names]
    order = {name: position for position, name in enumerate(dict.fromkeys(known))}
    return sorted(found, key=lambda name: (order.get(name, len(order)), name))


def series(rows: Sequence[Row], key: str) -> tuple[list[float], list[float]]:
    """The steps and the finite values of ``key``, in row order."""
    points = [(row[STEP], row[key]) for row in rows if key in row and STEP in row and math.isfinite(row[key])]
    return [step for step, _ in points], [value for _, value in points]


def mean(rows: Sequence[Row], key: str) -> float | None:
    """The mean of the finite values of ``key``; ``None`` when it has none."""
    values = series(rows, key)[1]
    return sum(values) / len(values) if values else None


def merge_rows(rows: Iterable[Mapping[str, float]]) -> list[dict[str, float]]:
    """Merge the rows of the same step (the telemetry's row and Lightning's), sorted by step.

    Rows without a ``step`` are dropped; later values win within a step.
    """
    merged: dict[float, dict[str, float]] = {}
    for row in rows:
        if STEP in row:
            merged.setdefault(row[STEP], {}).update(row)
    return [merged[step] for step in sorted(merged)]


def summary_rows(rows: Sequence[Row], prefix: str) -> tuple[list[str], list[list[float | None]]]:
    """One row per block: the last value of losses and accuracies, the mean of every other series.

    Returns:
        The column names (``"loss (last)"``, ``"activation_bytes (mean)"``, ...) and one list of values per
        block, the block index first; ``None`` where a block has no value of a series.
    """
    names = series_names(rows, prefix)
    columns = ["block"] + [f"{name} ({'last' if name.startswith(_LAST) else 'mean'})" for name in names]
    table: list[list[float | None]] = []
    for index in blocks(rows, prefix):
        values: list[float | None] = [float(index)]
        for name in names:
            points = series(rows, block_key(prefix, index, name))[1]
            if not points:
                values.append(None)
            elif name.startswith(_LAST):
                values.append(points[-1])
            else:
                values.append(sum(points) / len(points))
        table.append(values)
    return columns, table
