"""What MPC telemetry adds on top of the plain metrics when the logger is W&B: metric definitions and charts.

Pure functions over a W&B run (``logger.experiment``) and plain numbers, so that the Lightning callback
keeps only the bookkeeping. Nothing here needs network: W&B's offline and disabled modes accept it all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["BLOCK_SUMMARIES", "block_charts", "define_block_metrics", "log_epoch", "setup_run"]

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


def setup_run(
    logger: Any, prefix: str, num_blocks: int, config: dict[str, Any], partition: Sequence[dict[str, Any]], step: int
) -> None:
    """At fit start: metric definitions, the rule's configuration in the run config, the partition table.

    Args:
        logger: a Lightning ``WandbLogger``.
        prefix: the metric prefix.
        num_blocks: the number of blocks.
        config: the rule's description and the telemetry settings (stored under ``config[prefix]``).
        partition: the partition summary rows as dictionaries.
        step: the step to log the table at.
    """
    experiment = logger.experiment
    define_block_metrics(experiment, prefix, num_blocks)
    experiment.config.update({prefix: config}, allow_val_change=True)
    if partition:
        columns = list(partition[0])
        data = [[_table_value(value) for value in row.values()] for row in partition]
        logger.log_table(f"{prefix}/partition", columns=columns, data=data, step=step)


def log_epoch(
    logger: Any,
    prefix: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    history_steps: Sequence[int],
    history_loss: Sequence[Sequence[float | None]],
    step: int,
) -> None:
    """At an epoch's end: the per-block table and the charts (loss per block over steps, memory per block)."""
    memory_column = list(columns).index("activation_bytes")
    charts = block_charts(prefix, history_steps, history_loss, [row[memory_column] for row in rows])
    logger.log_table(f"{prefix}/blocks", columns=list(columns), data=[list(row) for row in rows], step=step)
    if charts:
        logger.log_metrics(charts, step=step)


def _table_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return str(list(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
