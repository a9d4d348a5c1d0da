"""Keep a benchmark's console to progress and results: Lightning's info lines and known harmless warnings off."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["quiet_lightning"]

_KNOWN_WARNINGS = (
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*smaller than the logging interval.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


@contextlib.contextmanager
def quiet_lightning(level: int = logging.WARNING, all_warnings: bool = False) -> Iterator[None]:
    """Quiet Lightning's loggers and warnings; restores warnings and log levels on exit.

    Args:
        level: the least level Lightning's loggers still print.
        all_warnings: silence every warning, not only the known harmless ones of these runs.
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for logger in loggers:
            logger.setLevel(level)
        if all_warnings:
            warnings.simplefilter("ignore")
        else:
            for message in _KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
        try:
            yield
        finally:
            for logger, previous in zip(loggers, levels):
                logger.setLevel(previous)
