"""Byte quantities: SI prefixes are powers of 1000, IEC prefixes powers of 1024."""

from __future__ import annotations

import pytest

from lightning_mpc.horizon.units import format_bytes, parse_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GB", 2_000_000_000),
        ("2 gb", 2_000_000_000),
        ("2GiB", 2 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("1.5kB", 1500),
        ("1.5KiB", 1536),
        ("3TB", 3 * 10**12),
        ("100", 100),
        ("100B", 100),
        # One rule (Kubernetes' memory quantities): the prefix decides the base, the trailing B is optional.
        ("2G", 2_000_000_000),
        ("1KB", 1000),
        ("1k", 1000),
        ("2Gi", 2 * 1024**3),
        ("2gib", 2 * 1024**3),
        ("3Mi", 3 * 1024**2),
        ("1e3", 1000),
        (4096, 4096),
        (2.5e9, 2_500_000_000),
    ],
)
def test_parse_bytes(text: object, expected: int) -> None:
    assert parse_bytes(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2 parsecs", "Unknown unit"),
        ("lots", "Cannot read"),
        ("", "Cannot read"),
        (0, "positive"),
        (-5, "positive"),
        ("0GB", "positive"),
        (float("inf"), "positive"),
        (True, "byte quantity"),
        ([1], "byte quantity"),
    ],
)
def test_parse_bytes_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_bytes(value)  # type: ignore[arg-type]
    assert "HINT:" in str(info.value)


def test_format_bytes_round_trips_through_parse() -> None:
    for value in (512, 12_345, 6_700_000, 3_210_000_000):
        text = format_bytes(value)
        assert abs(parse_bytes(text.replace(" ", "")) - value) <= 0.005 * value
    assert format_bytes(999) == "999 B"
    assert format_bytes(1_230_000) == "1.23 MB"
