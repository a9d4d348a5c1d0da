"""One table printer for every benchmark and report: Markdown or aligned plain text.

Example::

    table = Table(["method", "peak MiB", "x BP"])
    table.add("back-propagation", mib(bp), "1.00")
    print(table.render(markdown=True))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["MIB", "Table", "mib", "optional"]

MIB = 2**20


def mib(nbytes: float | None, digits: int = 2) -> str:
    """Bytes as MiB with ``digits`` decimals; ``"-"`` for ``None``."""
    return "-" if nbytes is None else f"{nbytes / MIB:.{digits}f}"


def optional(value: float | None, digits: int = 2) -> str:
    """A number with ``digits`` decimals; ``"-"`` for ``None``."""
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass
class Table:
    """A table of strings; the first column is left-aligned, the others right-aligned.

    Attributes:
        header: the column names.
        rows: the cells, one list per row (as many as the header).
    """

    header: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        """Append a row; cells are converted with ``str``.

        Raises:
            ValueError: if the row has more or fewer cells than the header.
        """
        if len(cells) != len(self.header):
            raise ValueError(
                f"Table row {cells!r} has {len(cells)} cells, the header {list(self.header)} has {len(self.header)}. "
                "HINT: give one cell per column."
            )
        self.rows.append([str(cell) for cell in cells])

    def column(self, name: str) -> list[str]:
        """The cells of the column ``name``."""
        index = list(self.header).index(name)
        return [row[index] for row in self.rows]

    def render(self, markdown: bool = True) -> str:
        """The table as Markdown (padded, so the source is readable too) or as aligned plain text."""
        lines = [list(self.header), *self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(self.header))]

        def fmt(line: Sequence[str]) -> str:
            cells = [c.ljust(n) if i == 0 else c.rjust(n) for i, (c, n) in enumerate(zip(line, widths))]
            return "| " + " | ".join(cells) + " |" if markdown else "  ".join(cells)

        out = [fmt(self.header)]
        if markdown:
            out.append("|" + "|".join("-" * (n + 1) + (":" if i else "-") for i, n in enumerate(widths)) + "|")
        else:
            out.append("-" * len(out[0]))
        out.extend(fmt(row) for row in self.rows)
        return "\n".join(out)
