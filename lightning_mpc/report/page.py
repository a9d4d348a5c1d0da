"""One self-contained HTML page (figures inlined as ``data:`` URIs, no external URL) and its tables."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_mpc.horizon.units import format_bytes

__all__ = ["Figure", "format_cell", "markdown_table", "render_page"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1450px;
       color: #1d1d1f; background: #f5f5f7; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
img { max-width: 100%; border: 1px solid #d2d2d7; border-radius: 6px; background: white; }
table { border-collapse: collapse; background: white; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #d2d2d7; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #ececf0; } td:first-child, th:first-child { text-align: left; }
code { background: #ececf0; padding: 0 0.25rem; border-radius: 3px; }
.muted { color: #6e6e73; font-size: 0.85rem; }
"""


@dataclass
class Figure:
    """One prefix's section of the page.

    Attributes:
        prefix: the metric prefix (``"mpc"``).
        png: the drawn figure.
        columns: the summary table's column names.
        rows: the summary table's rows (block index first).
        partition: the partition rows from the run config, when the run has them.
    """

    prefix: str
    png: Path
    columns: list[str]
    rows: list[list[float | None]]
    partition: list[Mapping[str, Any]] = field(default_factory=list)


def format_cell(column: str, value: Any) -> str:
    """A table cell: bytes in KiB/MiB, milliseconds with 3 decimals, integers in full, other numbers with 4 digits."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if column == "block":
        return f"{int(value):02d}"
    if "bytes" in column:
        return format_bytes(value, binary=True)
    if "_ms" in column:
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table of :func:`format_cell` values."""
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    lines = ["| " + " | ".join(columns) + " |", rule]
    lines += ["| " + " | ".join(format_cell(c, v) for c, v in zip(columns, row)) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(c, v))}</td>" for c, v in zip(columns, row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_page(title: str, source: str, facts: Mapping[str, str], figures: Sequence[Figure]) -> str:
    """The report as one HTML document that needs no other file and no network.

    Args:
        title: the page's heading.
        source: where the run was read from (shown as text).
        facts: run facts shown as a two-column table (horizon, mode, ...).
        figures: one section per metric prefix.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">Read from <code>{html.escape(source)}</code> by <code>lightning-mpc report</code>.</p>',
    ]
    if facts:
        parts.append(_html_table(["run", "value"], [[k, v] for k, v in facts.items()]))
    for figure in figures:
        parts.append(f"<h2>Per-block telemetry: <code>{html.escape(figure.prefix)}/block_*</code></h2>")
        parts.append(_image(figure.png, f"{figure.prefix} per-block loss, memory, alignment and time"))
        parts.append(
            '<p class="muted">Per block: the last value of losses and accuracies, the mean over the measured steps '
            "of every other series.</p>"
        )
        parts.append(_html_table(figure.columns, figure.rows))
        if figure.partition:
            columns = list(figure.partition[0])
            parts.append(f"<h2>Partition (<code>{html.escape(figure.prefix)}</code> run config)</h2>")
            parts.append(_html_table(columns, [[row.get(c) for c in columns] for row in figure.partition]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
