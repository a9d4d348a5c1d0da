"""The window rule itself."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lightning_mpc.core.schedule import target_depths, windows
from tests.reference import reference_depth


def test_known_depths() -> None:
    assert target_depths(6, 2, "sliding") == [2, 3, 4, 5, 6, 6]
    assert target_depths(6, 2, "block") == [2, 2, 4, 4, 6, 6]
    assert target_depths(5, 2, "block") == [2, 2, 4, 4, 5]
    assert target_depths(4, 1, "sliding") == target_depths(4, 1, "block") == [1, 2, 3, 4]
    assert target_depths(4, 9, "sliding") == target_depths(4, 4, "block") == [4, 4, 4, 4]


@given(st.integers(1, 30), st.integers(1, 40), st.sampled_from(["sliding", "block"]))
def test_depths_match_the_definition_and_windows_fit_the_horizon(num_blocks: int, horizon: int, mode: str) -> None:
    depths = target_depths(num_blocks, horizon, mode)  # type: ignore[arg-type]
    assert depths == [reference_depth(k, num_blocks, horizon, mode) for k in range(num_blocks)]
    assert all(len(w) <= horizon for w in windows(num_blocks, horizon, mode))  # type: ignore[arg-type]
