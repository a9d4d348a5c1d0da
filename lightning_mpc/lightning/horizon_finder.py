"""``HorizonFinder``: the horizon selection as a callback, in the style of Lightning's ``LearningRateFinder``."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from typing_extensions import override

from lightning_mpc.core.heads import build_heads, head_specs_for
from lightning_mpc.core.hooks import BlockHooks
from lightning_mpc.core.schedule import Mode, validate_mode
from lightning_mpc.horizon.selection import HorizonReport
from lightning_mpc.lightning.auto_horizon import AUTO, DEFAULT_AUTO_BATCHES, AutoHorizon
from lightning_mpc.lightning.controller import dry_run, module_local_loss
from lightning_mpc.lightning.mixin import MPCMixin, resolve_blocks
from lightning_mpc.rules.mpc.rule import HEADS_ATTRIBUTE, MPCRule

__all__ = ["HorizonFinder"]


class HorizonFinder(Callback):
    """Select the horizon for an objective when ``fit`` starts, and keep the report.

    Like Lightning's ``LearningRateFinder``, the callback measures at ``on_fit_start`` and, under an
    MPC strategy, trains with what it found (``update_strategy=True``). With ``epochs=(0, 2)`` it
    measures again at the start of epoch 2, once the local heads have learned (at initialisation the
    heads are random, which makes small horizons look worse than they become). It measures on the first
    ``num_batches`` training batches exactly as ``MPCStrategy(horizon="auto")`` does (see
    :func:`lightning_mpc.select_horizon`): the strategy's blocks and heads under an MPC strategy;
    under any other strategy the module's blocks with freshly built heads that are discarded
    afterwards (the module is left unchanged). Give exactly one objective.

    For the report without training, fit for zero steps::

        finder = HorizonFinder(memory_budget="2GB")
        L.Trainer(max_steps=0, callbacks=[finder]).fit(model, datamodule)
        print(finder.report.summary()); finder.report.plot().savefig("horizon.png")

    Args:
        memory_budget: bytes or a string such as ``"2GB"``; the best alignment whose memory fits.
        min_alignment: a ``cos^2`` in ``(0, 1]``; the least memory reaching it.
        memory_weight: ``lam`` per byte; the minimum of ``lam * M(h) - cos^2(h)``.
        num_batches: how many of the first training batches to measure on.
        probes: the horizons to measure (default ``1, 2, 4, ...`` and ``T``).
        mode: the window rule to measure; default the MPC strategy's, else ``"sliding"``.
        update_strategy: under an MPC strategy, train with the horizon found.
        epochs: the epochs at whose start to select (``0`` is the start of ``fit``).

    Attributes:
        report: the latest :class:`~lightning_mpc.HorizonReport` (``None`` before the first).
        reports: every report of the last ``fit``, by epoch.
    """

    def __init__(
        self,
        *,
        memory_budget: float | str | None = None,
        min_alignment: float | None = None,
        memory_weight: float | None = None,
        num_batches: int = DEFAULT_AUTO_BATCHES,
        probes: Iterable[int] | None = None,
        mode: Mode | None = None,
        update_strategy: bool = True,
        epochs: Sequence[int] = (0,),
    ) -> None:
        auto = AutoHorizon.from_arguments(
            AUTO,
            memory_budget=memory_budget,
            min_alignment=min_alignment,
            memory_weight=memory_weight,
            num_batches=num_batches,
            probes=probes,
        )
        assert auto is not None
        self._auto = auto
        self._mode = None if mode is None else validate_mode(mode)
        self.update_strategy = update_strategy
        if not epochs or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs):
            raise ValueError(
                f"HorizonFinder: epochs must be a non-empty sequence of integers >= 0, got {epochs!r}. "
                "HINT: epochs=(0,) selects once, at the start of fit."
            )
        self.epochs = tuple(sorted(set(epochs)))
        self.report: HorizonReport | None = None
        self.reports: dict[int, HorizonReport] = {}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reports = {}
        if 0 in self.epochs:
            self.reports[0] = self.find(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch > 0 and epoch in self.epochs:
            self.reports[epoch] = self.find(trainer, pl_module)

    def find(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> HorizonReport:
        """Run the selection now (after the strategy's setup) and return the report."""
        controller = getattr(trainer.strategy, "rule", None)
        device = pl_module.device
        loss_fn = functools.partial(module_local_loss, pl_module)
        if isinstance(controller, MPCRule) and controller.engine is not None:
            blocks = list(controller.engine.blocks)
            heads = list(controller.engine.heads)
            mode = self._mode or controller.mode
            self.report = self._auto.select(trainer, pl_module, blocks, heads, mode, device, loss_fn)
            if self.update_strategy:
                controller.set_horizon(self.report.horizon)
                rank_zero_info(f"HorizonFinder: training with horizon {self.report.horizon}.")
        else:
            blocks, heads = _blocks_and_temporary_heads(trainer, pl_module, device)
            self.report = self._auto.select(trainer, pl_module, blocks, heads, self._mode or "sliding", device, loss_fn)
        return self.report


def _blocks_and_temporary_heads(
    trainer: pl.Trainer, module: pl.LightningModule, device: torch.device
) -> tuple[list[nn.Module], list[nn.Module | None]]:
    """The module's blocks, and its heads if it has some, else heads built as the strategy would, not kept."""
    blocks = resolve_blocks(module)
    existing = getattr(module, HEADS_ATTRIBUTE, None)
    if isinstance(existing, nn.ModuleList) and len(existing) == len(blocks) - 1:
        return blocks, list(existing)
    custom = module.configure_heads() if isinstance(module, MPCMixin) else None
    if custom is not None:
        return blocks, list(custom)
    hooks = BlockHooks(blocks)
    try:
        inspection = dry_run(trainer, module, blocks, hooks, device)
    finally:
        hooks.remove()
    dtype = next((p.dtype for b in blocks for p in b.parameters() if p.is_floating_point()), None)
    with isolate_rng():  # building heads draws their initialisation: leave training's draws alone
        heads = build_heads(head_specs_for(inspection.output_shapes)).to(device=device, dtype=dtype)
    return blocks, list(heads)
