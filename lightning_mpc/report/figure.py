"""The per-block figure: local loss curves, real memory per block, alignment with the true gradient, time per block.

One drawing for every consumer: ``lightning-mpc report``, the demo's report and ``docs/img/dashboard.png``.
Each panel is one metric family, as a W&B panel on ``<prefix>/block_*/<name>`` would show it; a family the
run did not log (another rule's telemetry, ``MPCTelemetry(memory=False)``, ...) leaves its panel with a
note instead of failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_mpc.report.series import Row, block_key, blocks, mean, series

__all__ = ["draw_dashboard"]

_KIB = 1024.0


def _missing(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="#555555")


def _loss_panel(ax: Any, rows: Sequence[Row], prefix: str, indices: list[int], colors: Any, labels: list[str]) -> None:
    for color, block, label in zip(colors, indices, labels):
        xs, ys = series(rows, block_key(prefix, block, "loss"))
        if xs:
            ax.plot(xs, ys, color=color, lw=1.4, label=label)
    ax.set_title(f"{prefix}/block_*/loss: local loss of each block's head", loc="left", fontsize=10)
    ax.set_xlabel("trainer/global_step")
    if ax.get_legend_handles_labels()[0]:
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2, frameon=False)
    else:
        _missing(ax, f"no {prefix}/block_*/loss series in this run")


def _memory_panel(ax: Any, rows: Sequence[Row], prefix: str, indices: list[int], colors: Any) -> None:
    names = [block_key(prefix, b, "activation_bytes") for b in indices]
    final = next((row for row in reversed(rows) if any(name in row for name in names)), {})
    ax.set_title(f"{prefix}/block_*/activation_bytes: real memory while each block ran", loc="left", fontsize=10)
    ax.set_xlabel("block")
    if not final:
        _missing(ax, f"no {prefix}/block_*/activation_bytes series in this run")
        return
    values = [final.get(name, 0.0) / _KIB for name in names]
    ax.bar([f"{b:02d}" for b in indices], values, color=colors)
    backprop = mean(rows, f"{prefix}/backprop_activation_bytes")
    peak = mean(rows, f"{prefix}/peak_activation_bytes")
    if backprop:
        label = f"back-propagation: {backprop / _KIB:.0f} KiB"
        ax.axhline(backprop / _KIB, color="#d62728", ls="--", lw=1.2, label=label)
    if peak:
        share = f" ({peak / backprop:.0%} of BP)" if backprop else ""
        label = f"{prefix.upper()} step peak: {peak / _KIB:.0f} KiB{share}"
        ax.axhline(peak / _KIB, color="black", lw=1.0, label=label)
    ax.set_ylabel("KiB held (allocator bytes)")
    ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=True, framealpha=0.9, loc="center right")


def alignment_limits(values: Sequence[float]) -> tuple[float, float]:
    """The alignment panel's y-range: ``-0.2 .. 1.05``, extended down to the lowest cosine drawn (at most -1.05).

    A fixed range cut off early steps whose local gradients point away from back-propagation's.
    """
    lowest = min(values, default=0.0)
    return max(-1.05, min(-0.2, lowest - 0.05)), 1.05


def _alignment_panel(
    ax: Any, rows: Sequence[Row], prefix: str, indices: list[int], colors: Any, labels: list[str]
) -> None:
    drawn: list[float] = []
    for color, block, label in zip(colors, indices, labels):
        xs, ys = series(rows, block_key(prefix, block, "alignment"))
        drawn += ys
        if xs:
            exact = all(abs(y - 1.0) < 1e-6 for y in ys)  # learns from the final loss, like back-propagation
            ax.plot(
                xs,
                ys,
                color=color,
                lw=3.0 if exact else 1.4,
                marker="o",
                ms=2.5,
                zorder=1 if exact else 2,
                label=f"{label}: exactly 1" if exact else label,
            )
    xs, ys = series(rows, f"{prefix}/alignment")
    drawn += ys
    if xs:
        ax.plot(xs, ys, color="black", lw=2.0, ls="--", label=f"{prefix}/alignment (whole network)")
    ax.set_title(f"{prefix}/block_*/alignment: cosine with the true gradient", loc="left", fontsize=10)
    ax.set_xlabel("trainer/global_step")
    ax.set_ylim(*alignment_limits(drawn))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2, frameon=False, loc="lower right")
    else:
        _missing(ax, "no alignment measured (MPCTelemetry(alignment_every=0))")


def _time_panel(ax: Any, rows: Sequence[Row], prefix: str, indices: list[int]) -> None:
    names = [f"{b:02d}" for b in indices]
    forward = [mean(rows, block_key(prefix, b, "forward_ms")) for b in indices]
    backward = [mean(rows, block_key(prefix, b, "backward_ms")) for b in indices]
    ax.set_title(f"{prefix}/block_*/forward_ms, backward_ms: mean per measured step", loc="left", fontsize=10)
    ax.set_xlabel("block")
    if all(value is None for value in forward + backward):
        _missing(ax, f"no {prefix}/block_*/forward_ms or backward_ms series in this run")
        return
    bottom = [value or 0.0 for value in forward]
    ax.bar(names, bottom, color="#4c72b0", label="forward_ms (block + head + loss)")
    ax.bar(
        names,
        [value or 0.0 for value in backward],
        bottom=bottom,
        color="#dd8452",
        label="backward_ms (head + window VJPs)",
    )
    ax.set_ylabel("ms")
    ax.legend(fontsize=8, frameon=False)


def draw_dashboard(rows: Sequence[Row], out: str | Path, *, prefix: str = "mpc", title: str | None = None) -> Path:
    """Draw the four per-block panels of ``prefix`` into the PNG ``out``.

    Args:
        rows: rows merged per step (:func:`~lightning_mpc.report.load_run` gives them).
        out: the PNG to write (its folder is created).
        prefix: the metric prefix whose ``<prefix>/block_NN/...`` series are drawn.
        title: the figure's title (default: ``"<prefix> telemetry"``).

    Returns:
        ``out`` as a ``Path``.

    Raises:
        ValueError: when the rows have no ``<prefix>/block_NN/...`` series.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    indices = blocks(rows, prefix)
    if not indices:
        raise ValueError(
            f"No {prefix}/block_NN/... series in the rows. HINT: train with MPCStrategy (its telemetry is on by "
            "default) and a logger, or pass the prefix the run logged (lightning-mpc report --prefix ...)."
        )
    colors = plt.get_cmap("viridis")([i / max(len(indices) - 1, 1) for i in range(len(indices))])
    labels = [f"block {b:02d}" + (" (model output)" if b == indices[-1] else "") for b in indices]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), constrained_layout=True)
    fig.patch.set_facecolor("#f5f5f7")
    fig.suptitle(title or f"{prefix} telemetry", x=0.01, ha="left", fontsize=12, fontweight="bold")
    for ax in axes.flat:
        ax.set_facecolor("white")
        ax.grid(alpha=0.25)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    _loss_panel(axes[0, 0], rows, prefix, indices, colors, labels)
    _memory_panel(axes[0, 1], rows, prefix, indices, colors)
    _alignment_panel(axes[1, 0], rows, prefix, indices, colors, labels)
    _time_panel(axes[1, 1], rows, prefix, indices)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, facecolor=fig.get_facecolor())
    plt.close(fig)
    return path
