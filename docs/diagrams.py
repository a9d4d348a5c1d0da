"""Draw the window diagram of the concepts page: ``python docs/diagrams.py`` writes ``docs/img/windows.png``.

For every loss ``l_j`` (rows) and block ``k`` (columns) a cell shows whether ``l_j`` trains block ``k``, only
passes its gradient through it (so the block's activations are held until then), or does not reach it. The
rule comes from :func:`lightning_mpc.target_depths`, the one the engine uses.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lightning_mpc.core.schedule import Mode, target_depths

TRAINS, PASSES, HEAD = "#1f77b4", "#aec7e8", "#f0f0f0"


def cells(num_blocks: int, horizon: int, mode: Mode) -> list[list[str]]:
    """``cells[j - 1][k]``: ``"trains"``, ``"passes"`` or ``""`` for loss ``l_j`` and block ``k``."""
    depths = target_depths(num_blocks, horizon, mode)
    grid = []
    for depth in range(1, num_blocks + 1):
        trained = [k for k in range(num_blocks) if depths[k] == depth]
        row = [""] * num_blocks
        if trained:
            for k in range(min(trained), depth):
                row[k] = "trains" if k in trained else "passes"
        grid.append(row)
    return grid


def draw(path: Path, num_blocks: int = 6, horizon: int = 2, modes: Sequence[Mode] = ("sliding", "block")) -> None:
    """Write the diagram for ``T = num_blocks`` and ``h = horizon``, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 4.3), constrained_layout=True)
    for ax, mode in zip(axes, modes):
        grid = cells(num_blocks, horizon, mode)
        for j, row in enumerate(grid):
            y = num_blocks - 1 - j
            for k, state in enumerate(row):
                color = {"trains": TRAINS, "passes": PASSES}.get(state, "white")
                ax.add_patch(Rectangle((k, y), 1, 1, facecolor=color, edgecolor="#888888", linewidth=0.8))
            # the loss sits on x_{j+1}: head j (or the model's output for the last row), right of block j
            is_last = j == num_blocks - 1
            ax.add_patch(Rectangle((j + 0.72, y + 0.2), 0.28, 0.6, facecolor="#2ca02c" if is_last else "#ff7f0e"))
            if not any(row):
                ax.text(j + 0.36, y + 0.5, "head\nonly", ha="center", va="center", fontsize=7, color="#555555")
        ax.set_xlim(0, num_blocks)
        ax.set_ylim(0, num_blocks)
        ax.set_xticks([k + 0.5 for k in range(num_blocks)], [f"block {k}" for k in range(num_blocks)], fontsize=8)
        ax.set_yticks(
            [num_blocks - 1 - j + 0.5 for j in range(num_blocks)],
            [f"$l_{{{j + 1}}}$" + (" (final)" if j == num_blocks - 1 else "") for j in range(num_blocks)],
        )
        ax.tick_params(length=0)
        ax.set_aspect("equal")
        title = "sliding (the paper's MPC rule)" if mode == "sliding" else "block (non-overlapping windows)"
        ax.set_title(f"{title}\nT = {num_blocks}, h = {horizon}", fontsize=10)
    fig.legend(
        handles=[
            Patch(facecolor=TRAINS, label="the loss trains this block"),
            Patch(facecolor=PASSES, label="its gradient passes through (activations held)"),
            Patch(facecolor="#ff7f0e", label="local head"),
            Patch(facecolor="#2ca02c", label="model output"),
        ],
        loc="outside lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``--out``, ``--blocks`` and ``--horizon``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "img" / "windows.png")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--horizon", type=int, default=2)
    args = parser.parse_args(argv)
    draw(args.out, args.blocks, args.horizon)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
