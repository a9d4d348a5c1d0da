"""``horizon="auto"`` inside Lightning: the selection on the first training batches, and its logging.

Shared by :class:`~lightning_mpc.MPCStrategy` (``horizon="auto"``) and the
:class:`~lightning_mpc.HorizonFinder` callback. The first few batches of the training dataloader are
transferred to the device as Lightning does (the module's batch-transfer hooks included); the input
of block 0 is captured with a forward pre-hook during a no-grad ``forward(batch_input(batch))`` (or is
``batch_input(batch)`` itself when the module has no ``forward``); the module's ``local_loss`` is the
loss of every depth, the final one included. Nothing of the module's state moves: gradients,
buffers and the global random state are restored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn

from lightning_mpc.core.hooks import first_block_input
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.schedule import Mode
from lightning_mpc.horizon.selection import HorizonReport, Objective, select_horizon, validate_objective
from lightning_mpc.lightning.batches import call_forward, training_dataloader
from lightning_mpc.lightning.mixin import batch_input

__all__ = ["AUTO", "AutoHorizon", "capture_block_input", "first_batches", "log_report"]

AUTO: Literal["auto"] = "auto"
DEFAULT_AUTO_BATCHES = 4

_OBJECTIVE_NAMES = ("memory_budget", "min_alignment", "memory_weight")


@dataclass(frozen=True)
class AutoHorizon:
    """How ``horizon="auto"`` chooses: the objective, how many training batches, which horizons to probe.

    Attributes:
        objective: the validated objective.
        num_batches: how many of the first training batches to measure on (``>= 1``).
        probes: the horizons to measure, ``None`` for the geometric default.
    """

    objective: Objective
    num_batches: int = DEFAULT_AUTO_BATCHES
    probes: tuple[int, ...] | None = None

    @classmethod
    def from_arguments(
        cls,
        horizon: object,
        *,
        memory_budget: float | str | None = None,
        min_alignment: float | None = None,
        memory_weight: float | None = None,
        num_batches: int = DEFAULT_AUTO_BATCHES,
        probes: Iterable[int] | None = None,
    ) -> AutoHorizon | None:
        """Validate a strategy's horizon arguments; ``None`` when the horizon is fixed.

        Raises:
            ValueError: ``horizon`` is a string other than ``"auto"``; ``"auto"`` without exactly one
                objective; an objective (or ``probes``) with a fixed horizon; a bad objective value.
        """
        given = {
            name: value
            for name, value in zip(_OBJECTIVE_NAMES, (memory_budget, min_alignment, memory_weight))
            if value is not None
        }
        if isinstance(horizon, str) and horizon != AUTO:
            raise ValueError(
                f"horizon must be an integer >= 1 or 'auto', got {horizon!r}. HINT: use horizon='auto' with one of "
                f"{', '.join(_OBJECTIVE_NAMES)} to select it, or an integer."
            )
        if horizon != AUTO:
            extra = [*given, *(["probes"] if probes is not None else [])]
            if extra:
                shown = ", ".join(f"{k}={v!r}" for k, v in given.items()) or f"probes={probes!r}"
                raise ValueError(
                    f"{shown} selects the horizon, but the horizon is fixed at {horizon!r}. HINT: pass "
                    "horizon='auto' to select it, or drop the selection arguments."
                )
            return None
        if len(given) != 1:
            shown = ", ".join(f"{k}={v!r}" for k, v in given.items()) or "none"
            raise ValueError(
                f"horizon='auto' needs exactly one objective, got {shown}. HINT: pass one of memory_budget='2GB' "
                "(the best alignment that fits), min_alignment=0.9 (the least memory reaching that cos^2) or "
                "memory_weight=lam (the minimum of lam * bytes - cos^2)."
            )
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(
                f"The number of batches to select the horizon on (auto_batches, num_batches) must be an integer "
                f">= 1, got {num_batches!r}. HINT: a few batches (4) suffice."
            )
        objective = validate_objective(memory_budget, min_alignment, memory_weight)
        return cls(objective, num_batches, None if probes is None else tuple(probes))

    def select(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        blocks: Sequence[nn.Module],
        heads: Sequence[nn.Module | None],
        mode: Mode,
        device: torch.device,
        loss_fn: Callable[[Tensor, Any], Tensor],
    ) -> HorizonReport:
        """Run the selection on the first training batches, log the report and return it.

        Args:
            trainer: the trainer, whose training dataloader supplies the batches.
            module: the ``LightningModule``; its ``forward`` reveals block 0's input.
            blocks: the module's blocks.
            heads: their local heads.
            mode: the window rule that training will use.
            device: where the blocks live.
            loss_fn: ``loss_fn(prediction, batch) -> scalar`` (the module's local loss).
        """
        with isolate_rng():
            batches = first_batches(trainer, module, device, self.num_batches)
            pairs = [(capture_block_input(module, blocks, batch), batch) for batch in batches]
            was_training = module.training
            module.train()  # measure what training will do: BatchNorm on batch statistics, dropout on
            try:
                report = select_horizon(
                    blocks,
                    heads,
                    pairs,
                    loss_fn,
                    probes=self.probes,
                    mode=mode,
                    **{self.objective.kind: self.objective.value},
                )
            finally:
                module.train(was_training)
        chosen = trainer.strategy.broadcast(report.horizon)  # every process trains with rank 0's choice
        if chosen != report.horizon:
            report = dataclasses.replace(report, horizon=chosen)
        log_report(trainer, report)
        return report


def first_batches(trainer: pl.Trainer, module: pl.LightningModule, device: torch.device, count: int) -> list[Any]:
    """The first ``count`` batches of the training dataloader (fewer if it has fewer), on ``device``.

    Raises:
        RuntimeError: if there is no training dataloader or it yields nothing.
    """
    dataloader = training_dataloader(trainer, module, "select the horizon")
    batches = []
    for batch in dataloader:
        batches.append(trainer.strategy.batch_to_device(batch, device))
        if len(batches) == count:
            break
    if not batches:
        raise RuntimeError(
            f"The training dataloader of {type(module).__name__} yielded no batch to select the horizon on. "
            "HINT: check the dataset, or use a fixed horizon."
        )
    return batches


def capture_block_input(module: nn.Module, blocks: Sequence[nn.Module], batch: Any) -> Any:
    """The input of block 0 when the module's ``forward`` runs on ``batch_input(batch)``, without grad.

    A module without a ``forward`` of its own (``training_step`` calls the network directly) gets
    ``batch_input(batch)``. Buffers are restored; the forward stops at block 0.

    Raises:
        RuntimeError: if the forward never runs block 0.
    """
    x = batch_input(batch)
    if isinstance(module, pl.LightningModule) and type(module).forward is pl.LightningModule.forward:
        return x
    with torch.no_grad(), preserved_buffers([module]):
        return first_block_input(blocks, lambda: call_forward(module, blocks, x))



def log_report(trainer: pl.Trainer, report: HorizonReport) -> None:
    """Print the report, log the choice and the laws as hyperparameters, and the plot and table to W&B."""
    rank_zero_info(report.summary())
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_hyperparams(report.hyperparameters())
        _log_to_wandb(logger, report)


def _log_to_wandb(logger: Any, report: HorizonReport) -> None:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if not isinstance(logger, WandbLogger):
        return
    import wandb

    rows = report.rows()
    columns = list(rows[0])
    table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
    logger.experiment.log({"mpc/horizon_selection": wandb.Image(report.plot()), "mpc/horizon_table": table})
