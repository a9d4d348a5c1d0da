"""Byte quantities: parsing ``"2GB"`` / ``"512MiB"`` / ``1_000_000`` and printing them back.

One rule, the one Kubernetes uses for memory quantities: the prefix decides the base and the trailing
``B`` is optional. The decimal prefixes ``k``, ``M``, ``G``, ``T`` are powers of 1000 (``"2G"`` and
``"2GB"`` are 2,000,000,000 bytes) and the binary prefixes ``Ki``, ``Mi``, ``Gi``, ``Ti`` are powers of
1024 (``"2Gi"`` and ``"2GiB"`` are 2,147,483,648 bytes). Unit names are case-insensitive (``"2gb"`` and
``"2Gb"`` mean 2 GB: nobody budgets memory in bits).
"""

from __future__ import annotations

import math
import re

__all__ = ["format_bytes", "parse_bytes"]

_UNITS: dict[str, int] = {"b": 1}
for _power, _prefix in enumerate("kmgt", start=1):
    for _unit in (_prefix, f"{_prefix}b"):
        _UNITS[_unit] = 1000**_power
    for _unit in (f"{_prefix}i", f"{_prefix}ib"):
        _UNITS[_unit] = 1024**_power
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_HINT = 'HINT: pass a number of bytes or a string such as "2GB" or "2G" (10^9 bytes) or "512MiB" or "512Mi" (2^20 bytes).'


def parse_bytes(value: float | str) -> int:
    """A byte quantity as an integer number of bytes.

    Args:
        value: a number of bytes (``int`` or integral ``float``) or a string ``"<number><unit>"`` with
            unit ``k``, ``M``, ``G``, ``T`` (powers of 1000) or ``Ki``, ``Mi``, ``Gi``, ``Ti`` (powers of
            1024), each with an optional trailing ``B``, case-insensitive; no unit (or ``B``) means bytes.

    Returns:
        The number of bytes, rounded down to an integer.

    Raises:
        ValueError: if the value is not positive, not finite, or the unit is unknown.

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
        else:
            raise ValueError(f"Unknown unit {match.group(2)!r} in {value!r}. {_HINT}")
    else:
        raise ValueError(f"Expected a byte quantity, got {value!r} ({type(value).__name__}). {_HINT}")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"A byte quantity must be positive and finite, got {text}. {_HINT}")
    return int(number * multiplier)


def format_bytes(num_bytes: float | None, *, binary: bool = False) -> str:
    """A short human-readable form: ``"1.23 MB"`` (powers of 1000), or ``"1.2 MiB"`` with ``binary=True``.

    Both read back with :func:`parse_bytes`; ``None`` prints as ``"-"``.
    """
    if num_bytes is None:
        return "-"
    size = float(num_bytes)
    if binary:
        for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if abs(size) >= factor:
                return f"{size / factor:.1f} {unit}"
        return f"{size:.0f} B"
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(size) >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size:.0f} B"
