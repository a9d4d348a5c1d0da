"""Which loss trains which block: the window rule of horizon-truncated credit assignment."""

from __future__ import annotations

from typing import Literal, get_args

Mode = Literal["sliding", "block"]
MODES: tuple[str, ...] = get_args(Mode)


def validate_horizon(horizon: object) -> int:
    """Check a horizon value and return it as an ``int``.

    Args:
        horizon: the number of blocks a loss reaches back; must be an integer >= 1.

    Raises:
        ValueError: if ``horizon`` is not an integer >= 1.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int):
        raise ValueError(
            f"horizon must be an integer >= 1, got {horizon!r} ({type(horizon).__name__}). "
            "HINT: use horizon=1 for local learning or a value >= the number of blocks for back-propagation."
        )
    if horizon < 1:
        raise ValueError(
            f"horizon must be >= 1, got {horizon}. "
            "HINT: use horizon=1 for local learning or a value >= the number of blocks for back-propagation."
        )
    return horizon


def validate_mode(mode: object) -> Mode:
    """Check a mode name and return it.

    Raises:
        ValueError: if ``mode`` is not one of :data:`MODES`.
    """
    if mode not in MODES:
        raise ValueError(
            f"mode must be one of {MODES}, got {mode!r}. "
            "HINT: 'sliding' is the paper's MPC rule, 'block' uses non-overlapping windows."
        )
    return mode  # type: ignore[return-value]


def target_depths(num_blocks: int, horizon: int, mode: Mode = "sliding") -> list[int]:
    """Depth of the loss that trains each block.

    Block ``k`` maps ``x_k`` to ``x_{k+1}``; the loss at depth ``j`` (``1 <= j <= T``) is computed on
    ``x_j``. In ``"sliding"`` mode block ``k`` learns from depth ``min(k + h, T)``; in ``"block"`` mode
    the blocks are cut into non-overlapping windows of ``h`` and every block of a window learns from
    the depth at the window's end.

    Args:
        num_blocks: ``T``, the number of blocks (>= 1).
        horizon: ``h`` (>= 1); values above ``T`` mean back-propagation.
        mode: ``"sliding"`` or ``"block"``.

    Returns:
        A list ``d`` of length ``T`` with ``d[k]`` the depth whose loss trains block ``k``.
        The list is non-decreasing and ``d[k] > k`` for every ``k``.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}. HINT: pass at least one block.")
    horizon = min(validate_horizon(horizon), num_blocks)
    mode = validate_mode(mode)
    if mode == "sliding":
        return [min(k + horizon, num_blocks) for k in range(num_blocks)]
    return [min((k // horizon + 1) * horizon, num_blocks) for k in range(num_blocks)]


def windows(num_blocks: int, horizon: int, mode: Mode = "sliding") -> list[range]:
    """The blocks whose activations must be held together when the loss at each depth is used.

    Returns one range per depth ``j = 1..T``: the blocks from the lowest block trained by a loss at
    depth ``>= j`` up to block ``j - 1``. Its length is at most ``h`` in both modes.
    """
    depths = target_depths(num_blocks, horizon, mode)
    result = []
    for depth in range(1, num_blocks + 1):
        low = min(k for k in range(num_blocks) if depths[k] >= depth)
        result.append(range(low, depth))
    return result
