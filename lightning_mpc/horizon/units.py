"""Byte quantities: parsing ``"2GB"`` / ``"512MiB"`` / ``1_000_000`` and printing them back.

Units follow the standards, as ``numfmt --from=auto`` and most package managers do: the SI prefixes
``kB``, ``MB``, ``GB``, ``TB`` are powers of 1000 (``"2GB"`` is 2,000,000,000 bytes) and the IEC prefixes
``KiB``, ``MiB``, ``GiB``, ``TiB`` are powers of 1024 (``"2GiB"`` is 2,147,483,648 bytes). Unit names are
case-insensitive (``"2gb"`` and ``"2Gb"`` mean 2 GB: nobody budgets memory in bits). A bare prefix
(``"2G"``) is refused because it is ambiguous between the two conventions.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_bytes", "parse_bytes"]

_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_HINT = 'HINT: pass a number of bytes or a string such as "2GB" (10^9 bytes) or "512MiB" (2^20 bytes).'


def parse_bytes(value: float | str) -> int:
    """A byte quantity as an integer number of bytes.

    Args:
        value: a number of bytes (``int`` or integral ``float``) or a string ``"<number><unit>"`` with
            unit ``B``, ``kB``, ``MB``, ``GB``, ``TB`` (powers of 1000) or ``KiB``, ``MiB``, ``GiB``,
            ``TiB`` (powers of 1024), case-insensitive; no unit means bytes.

    Returns:
        The number of bytes, rounded down to an integer.

    Raises:
        ValueError: if the value is not positive, not finite, or the unit is unknown or ambiguous.

    Example::

        parse_bytes("2GB")     # 2_000_000_000
        parse_bytes("1.5MiB")  # 1_572_864
    """
    if isinstance(value, bool):
        raise ValueError(f"Expected a byte quantity, got {value!r}. {_HINT}")
    if isinstance(value, (int, float)):
        number, text = float(value), repr(value)
        multiplier = 1
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(f"Cannot read {value!r} as a byte quantity. {_HINT}")
        number, unit = float(match.group(1)), match.group(2).lower()
        text = repr(value)
        if unit == "":
            multiplier = 1
        elif unit in _UNITS:
            multiplier = _UNITS[unit]
        elif unit in {"k", "m", "g", "t"}:
            raise ValueError(
                f"The unit of {value!r} is ambiguous: {unit.upper()} could mean {unit.upper()}B (powers of 1000) "
                f"or {unit.upper()}iB (powers of 1024). {_HINT}"
            )
        else:
            raise ValueError(f"Unknown unit {match.group(2)!r} in {value!r}. {_HINT}")
    else:
        raise ValueError(f"Expected a byte quantity, got {value!r} ({type(value).__name__}). {_HINT}")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"A byte quantity must be positive and finite, got {text}. {_HINT}")
    return int(number * multiplier)


def format_bytes(num_bytes: float) -> str:
    """A short human-readable form in SI units, e.g. ``"1.23 MB"`` (the convention of :func:`parse_bytes`)."""
    size = float(num_bytes)
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(size) >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size:.0f} B"
