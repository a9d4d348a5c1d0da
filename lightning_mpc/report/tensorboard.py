"""A TensorBoard custom-scalars layout that groups the per-block charts (loss, memory, alignment, time).

TensorBoard's *Custom Scalars* tab draws one multi-line chart per entry of the layout, each entry a list
of regular expressions over the scalar tags: ``^mpc/block_[0-9]+/loss$`` draws every block's loss in one
chart, whatever the depth. The layout is one summary in the run's event file, written at fit start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lightning_mpc.report.series import SECTIONS, chart_pattern

__all__ = ["add_tensorboard_layout", "custom_scalars_layout"]


def custom_scalars_layout(prefix: str = "mpc") -> dict[str, dict[str, list[Any]]]:
    """The layout for ``SummaryWriter.add_custom_scalars``: one category per section, one chart per family.

    Args:
        prefix: the metric prefix (``"mpc"``; another rule's prefix groups its own series).

    Returns:
        ``{"mpc: Per-block loss": {"mpc: loss": ["Multiline", ["^mpc/block_[0-9]+/loss$"]], ...}, ...}``,
        the format of ``torch.utils.tensorboard`` and ``tensorboardX``.
    """
    return {
        f"{prefix}: {section.title}": {
            f"{prefix}: {chart.title}": ["Multiline", [chart_pattern(prefix, chart)]] for chart in section.charts
        }
        for section in SECTIONS
    }


def add_tensorboard_layout(loggers: Iterable[Any], prefix: str = "mpc") -> int:
    """Write :func:`custom_scalars_layout` into every ``TensorBoardLogger`` among ``loggers``.

    Args:
        loggers: the trainer's loggers (``trainer.loggers``); the others are left alone.
        prefix: the metric prefix.

    Returns:
        The number of TensorBoard loggers that received the layout.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    written = 0
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_custom_scalars(custom_scalars_layout(prefix))
            written += 1
    return written
