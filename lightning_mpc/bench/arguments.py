"""``argparse`` types shared by the demo and the benchmarks' command lines."""

from __future__ import annotations

import argparse

from lightning_mpc.core.schedule import MODES

__all__ = ["horizon_list", "mode_list", "name_list", "positive_int"]


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def horizon_list(text: str) -> list[int]:
    """Comma-separated horizons (integers >= 1), sorted, each once."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"horizons must be integers >= 1, got {text!r}")
    return sorted(set(values))


def mode_list(text: str) -> list[str]:
    """Comma-separated MPC window modes, in the order given, each once."""
    values = name_list(text)
    bad = [v for v in values if v not in MODES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"modes must be among {', '.join(MODES)}, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    """Comma-separated names, in the order given, each once (empty entries dropped)."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
