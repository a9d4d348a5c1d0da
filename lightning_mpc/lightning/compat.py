"""Every place the plugin reads Lightning's private state, in one module (checked against Lightning 2.4 to 2.6).

Lightning keeps some facts a strategy or a callback needs only in private attributes: how many optimizer
steps have run, whether the current micro-batch accumulates, whether this step writes logs, the training
dataloader before the loop starts, the dataloader of a running ``validate``/``test``/``predict``. When
Lightning moves one of them, this module is the only one to change.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.fabric.strategies import _StrategyRegistry as StrategyRegistryType
from lightning.pytorch.overrides.distributed import _sync_module_states as sync_module_states
from lightning.pytorch.trainer.states import TrainerFn

__all__ = [
    "StrategyRegistryType",
    "is_accumulating",
    "optimizer_steps",
    "stage_dataloader_source",
    "sync_module_states",
    "training_dataloader_source",
    "writes_logs",
]


def optimizer_steps(trainer: pl.Trainer) -> int:
    """Optimizer steps taken so far (the step Lightning writes its metrics with)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def is_accumulating(trainer: pl.Trainer) -> bool:
    """Whether the current micro-batch accumulates (the optimizer does not step after it)."""
    return bool(trainer.fit_loop._should_accumulate())


def writes_logs(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes its step metrics to the loggers at the current step."""
    return bool(trainer._logger_connector.should_update_logs or trainer.fast_dev_run)


def _loop_dataloader(loop: Any) -> Any:
    source = getattr(loop, "_data_source", None)
    return source.dataloader() if source is not None and source.is_defined() else None


def training_dataloader_source(trainer: pl.Trainer) -> Any:
    """The training dataloader ``fit`` was given (through arguments, a datamodule or the module), or ``None``."""
    return _loop_dataloader(trainer.fit_loop)


def stage_dataloader_source(trainer: pl.Trainer) -> Any:
    """The dataloader(s) of the running ``validate``, ``test`` or ``predict`` call, or ``None``."""
    loops = {
        TrainerFn.VALIDATING: trainer.validate_loop,
        TrainerFn.TESTING: trainer.test_loop,
        TrainerFn.PREDICTING: trainer.predict_loop,
    }
    loop = loops.get(trainer.state.fn)  # type: ignore[call-overload]
    return None if loop is None else _loop_dataloader(loop)
