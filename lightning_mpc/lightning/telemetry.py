"""``MPCTelemetry``: per-block losses, accuracy, real memory, time, gradient norms and alignment of any rule.

A thin Lightning callback over the Trainer-free parts in :mod:`lightning_mpc.telemetry`: it sets a
:class:`~lightning_mpc.telemetry.records.StepRecorder` as the rule's observer, decides what to measure at
each step (:class:`~lightning_mpc.telemetry.plan.MeasurementPlan`), and writes what a
:class:`~lightning_mpc.telemetry.session.TelemetrySession` makes of the records to every logger (every
metric name is listed in :mod:`lightning_mpc.telemetry.session`). Per-block series go to each
logger's ``log_metrics`` in one call per measured step (as Lightning's ``LearningRateMonitor`` does); the
whole-network figures also go to ``trainer.callback_metrics``, so that checkpoints and early stopping can
monitor them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelSummary
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor

from lightning_mpc.core.memory import profile_real_memory
from lightning_mpc.lightning.compat import is_accumulating, optimizer_steps
from lightning_mpc.lightning.controller import module_local_loss
from lightning_mpc.report.tensorboard import add_tensorboard_layout
from lightning_mpc.rules.base import CreditRule
from lightning_mpc.telemetry import wandb_extras
from lightning_mpc.telemetry.plan import MeasurementPlan, StepPlan
from lightning_mpc.telemetry.probes import (
    BlockInputCapture,
    backprop_block_gradients,
    backprop_peak_bytes,
    block_grad_norms,
    block_parameters,
    gradient_alignment,
    step_update,
)
from lightning_mpc.telemetry.records import StepRecorder
from lightning_mpc.telemetry.session import TABLE_COLUMNS, TelemetrySession, block_key
from lightning_mpc.telemetry.summary import PartitionRow, partition_rows, render_partition

__all__ = ["MPCTelemetry", "RuleTelemetry", "attach_telemetry", "block_key", "validate_telemetry"]


def _classes(batch: Any) -> Tensor | None:
    target = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        return None
    return target


class MPCTelemetry(Callback):
    """Per-block telemetry of any credit-assignment rule, logged through Lightning's loggers.

    Args:
        alignment_every: measure the alignment with back-propagation every this many optimizer steps (and
            on the first); ``0`` never. It costs one back-propagation on those steps.
        log_every_n_steps: measure memory, time and gradient norms every this many optimizer steps (and on
            the first and last, so that short runs have them too); ``None`` follows
            ``Trainer(log_every_n_steps)``.
        summary: print the partition summary at fit start; ``None`` follows ``Trainer(enable_model_summary)``.
        accuracy: log each block's accuracy when ``batch[1]`` holds integer class labels.
        memory: measure real memory on measured steps, and back-propagation's once.
        saved_bytes: also count bytes saved for backward (a breakdown of the real figure).
        timing: time every block's forward and backward on measured steps.
        wandb: with a ``WandbLogger``: metric definitions, the partition and per-epoch tables, charts.

    Attributes:
        partition: the partition summary rows (after fit start; ``None`` if not computed).
        backprop_activation_bytes: back-propagation's real peak on the first measured batch.
    """

    def __init__(
        self,
        alignment_every: int = 0,
        log_every_n_steps: int | None = None,
        summary: bool | None = None,
        accuracy: bool = True,
        memory: bool = True,
        saved_bytes: bool = False,
        timing: bool = True,
        wandb: bool = True,
    ) -> None:
        for name, value, low in (("alignment_every", alignment_every, 0), ("log_every_n_steps", log_every_n_steps, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(
                    f"{name} must be an integer >= {low}, got {value!r}. HINT: alignment_every=0 turns the alignment "
                    "probe off; log_every_n_steps=None follows Trainer(log_every_n_steps)."
                )
        self.alignment_every, self.log_every_n_steps, self.summary = alignment_every, log_every_n_steps, summary
        self.accuracy, self.memory, self.saved_bytes, self.timing, self.wandb = accuracy, memory, saved_bytes, timing, wandb
        self.partition: list[PartitionRow] | None = None
        self.backprop_activation_bytes: int | None = None
        self._rule: CreditRule | None = None
        self._warned: set[str] = set()
        self._detach()

    @property
    def active(self) -> bool:
        """Whether the callback observes a rule (during ``fit``, with at least one logger)."""
        return self._recorder is not None

    # ------------------------------------------------------------------ fit start / end
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.partition, self.backprop_activation_bytes = None, None
        rule = getattr(trainer.strategy, "rule", None)
        if not isinstance(rule, CreditRule):
            rank_zero_warn(
                f"MPCTelemetry found no credit-assignment rule on {type(trainer.strategy).__name__}, so it logs "
                "nothing. HINT: train with Trainer(strategy='mpc') or another rule's strategy."
            )
            return
        self._rule = rule
        with contextlib.suppress(Exception):  # the TensorBoard layout must never stop training
            add_tensorboard_layout(trainer.loggers, rule.metric_prefix)
        show = self.summary if self.summary is not None else any(isinstance(c, ModelSummary) for c in trainer.callbacks)
        wandb_loggers = self._wandb_loggers(trainer)
        if not (show or wandb_loggers) or not rule.blocks:
            return
        self.partition = self._partition(trainer, pl_module, rule)
        if show:
            self._print_summary(rule)
        if wandb_loggers and trainer.is_global_zero:
            heads = [getattr(getattr(h, "spec", None), "to_dict", lambda h=h: type(h).__name__)()
                     for h in getattr(rule, "heads", None) or []]
            config = {**rule.describe(), "partition": [row.to_dict() for row in self.partition or []], "heads": heads,
                      "telemetry": {"alignment_every": self.alignment_every, "memory": self.memory}}
            for logger in wandb_loggers:
                self._guard("wandb", lambda: wandb_extras.setup_run(
                    logger, rule.metric_prefix, len(rule.blocks), config, [r.to_dict() for r in self.partition or []],
                    optimizer_steps(trainer)))

    def _partition(self, trainer: pl.Trainer, module: pl.LightningModule, rule: CreditRule) -> list[PartitionRow]:
        blocks, heads = rule.blocks, list(getattr(rule, "heads", None) or [])
        depths = getattr(getattr(rule, "engine", None), "depths", None)
        learns = [f"l_{d}" for d in depths] if depths is not None else [rule.name] * len(blocks)
        inspection = getattr(getattr(trainer.strategy, "controller", None), "inspection", None)
        if inspection is None:
            return partition_rows(module, blocks, heads, learns)
        x0, shapes = inspection.first_input, inspection.output_shapes
        target = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        profile = self._guard("summary", lambda: profile_real_memory(
            blocks, [], x0, target, lambda out, _: out.float().square().mean(), local_losses=False))
        per_sample = None if profile is None else [
            (o + g) / max(x0.shape[0], 1) for o, g in zip(profile.output_bytes, profile.graph_bytes)]
        return partition_rows(module, blocks, heads, learns, shapes, per_sample)

    @rank_zero_only
    def _print_summary(self, rule: CreditRule) -> None:
        from rich import get_console

        hidden = ("rule", "learns_from", "num_blocks")
        settings = ", ".join(f"{k} {v!r}" if isinstance(v, str) else f"{k} {v}"
                             for k, v in rule.describe().items() if k not in hidden)
        title = f"{rule.name.upper()} partition: {len(rule.blocks)} blocks" + (f", {settings}" if settings else "")
        get_console().print(render_partition(self.partition or [], title=title,
                                             caption="Act./sample: real bytes each block's output and graph hold."))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rule = self._rule
        if rule is None or not trainer.loggers:
            return
        if rule.observer is not None and rule.observer is not self._recorder:
            rank_zero_warn("MPCTelemetry is off: the rule already has an observer. HINT: use one MPCTelemetry per trainer.")
            return
        blocks = rule.blocks
        self._recorder = StepRecorder(timing=False, on_prediction=self._on_prediction,
                                      last_block=len(blocks) - 1 if blocks else None)
        rule.observer = self._recorder
        self._capture = BlockInputCapture(blocks) if blocks else None
        self._session = TelemetrySession(rule.metric_prefix, len(blocks), pl_module.device)
        every = trainer.log_every_n_steps or 1
        self._plan = MeasurementPlan(self.log_every_n_steps or every, self.alignment_every)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._detach()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._detach()

    def _detach(self) -> None:
        recorder = getattr(self, "_recorder", None)
        if recorder is not None:
            recorder.stop_memory()
            if self._rule is not None and self._rule.observer is recorder:
                self._rule.observer = None
        if getattr(self, "_capture", None) is not None:
            self._capture.remove()  # type: ignore[union-attr]
        self._recorder: StepRecorder | None = None
        self._capture: BlockInputCapture | None = None
        self._session: TelemetrySession | None = None
        self._step = StepPlan(False, False)
        self._predictions: dict[int, Tensor] = {}
        self._target: Tensor | None = None
        self._before: list[list[Tensor | None]] | None = None
        self._batch: Any = None
        self._grad_norms: list[Tensor | None] | tuple[()] = ()
        self._alignment_value: tuple[list[float], float] | None = None

    # ------------------------------------------------------------------ steps
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        recorder, rule = self._recorder, self._rule
        if recorder is None or rule is None:
            return
        rule.observer = recorder  # a rule may replace its engine between steps (MPC's set_horizon)
        last = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._step = self._plan.at(optimizer_steps(trainer) + 1, accumulating=is_accumulating(trainer), last_step=last)
        self._target = _classes(batch) if self.accuracy else None
        self._batch = batch if self._step.align else None
        self._predictions = {}
        recorder.timing = self._step.measure and self.timing
        recorder.device = pl_module.device
        recorder.keep_output_gradient = self._step.align
        need_input = self._step.align or (self.memory and self.backprop_activation_bytes is None and self._step.measure)
        if self._capture is not None and need_input:
            self._capture.arm(random_state=self._step.align)
        params = block_parameters(rule.blocks)
        self._before = None
        if self._step.align and batch_idx % trainer.accumulate_grad_batches:
            self._before = [[None if p.grad is None else p.grad.detach().clone() for p in group] for group in params]
        if self._step.measure and self.memory:
            recorder.start_memory(pl_module.device, saved_bytes=self.saved_bytes, exclude=pl_module.parameters())

    def _on_prediction(self, index: int, prediction: Tensor) -> None:
        target = self._target
        if target is None or not isinstance(prediction, Tensor) or not prediction.is_floating_point():
            return
        if prediction.dim() == target.dim() + 1 and prediction.shape[:-1] == target.shape and prediction.shape[-1] > 1:
            self._predictions[index] = prediction.detach()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        recorder, rule = self._recorder, self._rule
        if recorder is None or rule is None:
            return
        recorder.stop_memory()  # every gradient of the step is in .grad; probes below are not counted
        if self._step.align and self._capture is not None and self._capture.input is not None:
            self._guard("alignment", lambda: self._alignment(trainer, pl_module, rule))

    def _alignment(self, trainer: pl.Trainer, module: pl.LightningModule, rule: CreditRule) -> None:
        assert self._recorder is not None and self._capture is not None and self._capture.input is not None
        record, params = self._recorder.record, block_parameters(rule.blocks)
        grad, heads, batch = record.output_gradient, list(getattr(rule, "heads", None) or []), self._batch
        loss = None if grad is not None else (lambda out: module_local_loss(module, out, batch))
        reference = backprop_block_gradients(
            rule.blocks, heads, self._capture.input, grad_output=grad, loss=loss,
            random_state=self._capture.random_state, forward_context=trainer.precision_plugin.train_step_context,
        )
        result = gradient_alignment(step_update(params, self._before), reference, params)
        self._alignment_value = (result.blocks, result.total)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._recorder is not None and self._rule is not None and self._step.measure:
            self._grad_norms = block_grad_norms(self._rule.blocks)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        recorder, session, rule = self._recorder, self._session, self._rule
        if recorder is None or session is None or rule is None:
            return
        recorder.stop_memory()
        try:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            final = loss.detach().reshape(()) * trainer.accumulate_grad_batches if isinstance(loss, Tensor) and loss.numel() == 1 else None
            losses, accuracy = session.accumulate(recorder.record, final, self._predictions, self._target)
            if self._step.measure:
                self._measure_backprop(rule, pl_module, batch)
                series, headline = session.step_metrics(
                    recorder.record, losses, accuracy, grad_norms=self._grad_norms,
                    alignment=self._alignment_value, backprop_bytes=self.backprop_activation_bytes,
                )
                self._write(trainer, pl_module, session.resolve(series, optimizer_steps(trainer)), headline)
        finally:
            if self._capture is not None:
                self._capture.clear()
            recorder.clear()
            self._grad_norms, self._alignment_value, self._predictions, self._before, self._batch = (), None, {}, None, None

    def _measure_backprop(self, rule: CreditRule, module: pl.LightningModule, batch: Any) -> None:
        x0 = None if self._capture is None else self._capture.input
        if not self.memory or self.backprop_activation_bytes is not None or x0 is None:
            return
        self.backprop_activation_bytes = 0  # measured once, even if it fails
        allocate = module.trainer.accumulate_grad_batches == 1  # else .grad exists from the window's earlier batches
        self.backprop_activation_bytes = self._guard("measure back-propagation's memory", lambda: backprop_peak_bytes(
            rule.blocks, x0, batch, lambda out, b: module_local_loss(module, out, b), allocate_gradients=allocate)) or None

    def _write(self, trainer: pl.Trainer, module: pl.LightningModule, values: dict[str, float], headline: dict[str, float]) -> None:
        """Every figure to every logger at the measured step; the whole-network ones also to ``callback_metrics``."""
        values = {**values, **headline, "epoch": trainer.current_epoch}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=optimizer_steps(trainer))
        if headline:  # for ModelCheckpoint / EarlyStopping; the loggers already have them
            module.log_dict(headline, on_step=True, on_epoch=False, batch_size=1, logger=False)

    # ------------------------------------------------------------------ epoch end
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        session, rule = self._session, self._rule
        if self._recorder is None or session is None or rule is None:
            return
        loss, accuracy = session.epoch_values()
        metrics = session.epoch_metrics(loss, accuracy)
        step = max(optimizer_steps(trainer) - 1, 0)
        if metrics:
            metrics["epoch"] = trainer.current_epoch
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        if self._wandb_loggers(trainer) and trainer.is_global_zero:
            modules = [row.module for row in self.partition] if self.partition else []
            rows = session.table_rows(trainer.current_epoch, modules, loss, accuracy)
            for logger in self._wandb_loggers(trainer):
                self._guard("wandb_epoch", lambda: wandb_extras.log_epoch(
                    logger, rule.metric_prefix, TABLE_COLUMNS, rows, session.history_steps, session.history_loss, step))
        session.reset_epoch()

    # ------------------------------------------------------------------ helpers
    def _wandb_loggers(self, trainer: pl.Trainer) -> list[WandbLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)] if self.wandb else []

    def _guard(self, what: str, work: Any) -> Any:
        """Run optional work (W&B extras, probes); an error becomes one warning, never a stopped run."""
        try:
            return work()
        except Exception as err:
            if what not in self._warned:
                self._warned.add(what)
                rank_zero_warn(f"MPCTelemetry could not {what.replace('_', ' ')}: {type(err).__name__}: {err}")
            return None


RuleTelemetry = MPCTelemetry
"""The same callback under a rule-neutral name."""


def validate_telemetry(telemetry: object) -> bool | MPCTelemetry:
    """Check a strategy's ``telemetry`` argument when the strategy is built (not when ``fit`` starts).

    Raises:
        TypeError: for anything but a bool or an :class:`MPCTelemetry`.
    """
    if isinstance(telemetry, (bool, MPCTelemetry)):
        return telemetry
    raise TypeError(
        f"telemetry must be True, False or an MPCTelemetry, got {telemetry!r} ({type(telemetry).__name__}). "
        "HINT: pass telemetry=False to turn it off, or telemetry=MPCTelemetry(...) to configure it."
    )


def attach_telemetry(trainer: pl.Trainer, telemetry: bool | MPCTelemetry) -> MPCTelemetry | None:
    """Add the telemetry callback to ``trainer`` unless the user already gave one (before the checkpoint callbacks)."""
    for callback in trainer.callbacks:
        if isinstance(callback, MPCTelemetry):
            return callback
    if telemetry is False:
        return None
    callback = MPCTelemetry() if telemetry is True else validate_telemetry(telemetry)
    assert isinstance(callback, MPCTelemetry)
    position = next((i for i, c in enumerate(trainer.callbacks) if isinstance(c, Checkpoint)), len(trainer.callbacks))
    trainer.callbacks.insert(position, callback)
    return callback
