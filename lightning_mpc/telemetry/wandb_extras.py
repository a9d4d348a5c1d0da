"""What MPC telemetry adds on top of the plain metrics when the logger is W&B: metric definitions and charts.

Pure functions over a W&B run (``logger.experiment``) and plain numbers, so that the Lightning callback
keeps only the bookkeeping. Nothing here needs network: W&B's offline and disabled modes accept it all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["BLOCK_SUMMARIES", "block_charts", "define_block_metrics"]

BLOCK_SUMMARIES = (
    ("loss", "min,last"),
    ("accuracy", "max,last"),
    ("activation_bytes", "max,last"),
    ("alignment", "mean,last"),
)
"""Per-block series and the W&B run summaries kept for them."""


def define_block_metrics(experiment: Any, prefix: str, num_blocks: int) -> None:
    """Make every ``{prefix}/...`` series share ``trainer/global_step`` (epoch series share ``epoch``).

    Args:
        experiment: the W&B run (``WandbLogger.experiment``); runs without ``define_metric`` are skipped.
        prefix: the metric prefix (``"mpc"``).
        num_blocks: the number of blocks.
    """
    define = getattr(experiment, "define_metric", None)
    if not callable(define):
        return
    define("trainer/global_step")
    define(f"{prefix}/*", step_metric="trainer/global_step")
    define(f"{prefix}/peak_activation_bytes", step_metric="trainer/global_step", summary="max,last")
    define(f"{prefix}/alignment", step_metric="trainer/global_step", summary="mean,last")
    for index in range(num_blocks):
        for name, summary in BLOCK_SUMMARIES:
            define(f"{prefix}/block_{index:02d}/{name}", step_metric="trainer/global_step", summary=summary)
        for name in ("loss_epoch", "accuracy_epoch"):
            define(f"{prefix}/block_{index:02d}/{name}", step_metric="epoch")


def block_charts(
    prefix: str,
    steps: Sequence[int],
    loss_history: Sequence[Sequence[float | None]],
    activation_bytes: Sequence[float | None],
) -> dict[str, Any]:
    """A line chart of the local loss per block over steps and a bar chart of each block's window bytes.

    Args:
        prefix: the metric prefix (``"mpc"``).
        steps: the global steps of the loss history.
        loss_history: one list of per-block losses per step (``None`` where not measured).
        activation_bytes: each block's mean window bytes this epoch (``None`` where not measured).

    Returns:
        The charts, keyed by metric name, ready for ``logger.log_metrics``.
    """
    import wandb

    num_blocks = len(activation_bytes)
    keys = [f"block_{index:02d}" for index in range(num_blocks)]
    charts: dict[str, Any] = {}
    if steps:
        series = [
            [values[index] if values[index] is not None else float("nan") for values in loss_history]
            for index in range(num_blocks)
        ]
        charts[f"{prefix}/charts/block_loss"] = wandb.plot.line_series(
            xs=list(steps), ys=series, keys=keys, title="Local loss per block", xname="trainer/global_step"
        )
    memory_rows = [[keys[i], value] for i, value in enumerate(activation_bytes) if value is not None]
    if memory_rows:
        charts[f"{prefix}/charts/activation_bytes"] = wandb.plot.bar(
            wandb.Table(columns=["block", "activation_bytes"], data=memory_rows),
            "block",
            "activation_bytes",
            title="Activation bytes held per block window",
        )
    return charts
