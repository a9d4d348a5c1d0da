"""``MPCTelemetry``: per-block losses, accuracy, memory, time and gradient alignment, logged through Lightning.

Every figure reaches every Lightning logger (CSV, TensorBoard, W&B, MLflow, ...) at the step Lightning
writes its own metrics with: the whole-network figures and the epoch figures through
``LightningModule.log`` (so they are also in ``trainer.callback_metrics``, for checkpoints and early
stopping), the per-block series through each logger's ``log_metrics`` in one call per step, as
Lightning's ``LearningRateMonitor`` does (``LightningModule.log`` costs a fraction of a millisecond per
key, and there are several keys per block). When a :class:`~lightning.pytorch.loggers.WandbLogger` is
attached, W&B also gets metric definitions, a per-epoch table, charts and the run config. The MPC
strategies add a default instance (``MPCStrategy(telemetry=True)``); pass your own in
``Trainer(callbacks=[...])`` to configure it.

Metric names (``XX`` is the block index, two digits; block ``k``'s head is trained on ``l_{k+1}``):

==================================  ==============================================================
``mpc/block_XX/loss``               head ``XX``'s local loss (the last block: the loss returned by
                                    ``training_step``)
``mpc/block_XX/accuracy``           top-1 accuracy of head ``XX`` (the last block: of the model output),
                                    when ``batch[1]`` holds integer classes
``mpc/block_XX/activation_bytes``   bytes saved for backward held while block ``XX``'s loss is
                                    back-propagated (the window's graphs plus the head's)
``mpc/block_XX/cuda_peak_bytes``    on CUDA: ``max_memory_allocated`` while block ``XX`` and its window ran
``mpc/block_XX/grad_norm``          2-norm of the block's update (its ``.grad`` before clipping)
``mpc/block_XX/forward_ms``         block ``XX``'s forward plus its head's forward and loss
``mpc/block_XX/backward_ms``        the head's loss backward plus every backward through the block
``mpc/block_XX/alignment``          cosine between the block's update and back-propagation's gradient
``mpc/alignment``                   the same over the whole network (all blocks concatenated)
``mpc/peak_activation_bytes``       the step's peak of bytes saved for backward
``mpc/backprop_activation_bytes``   what back-propagation holds on the first batch (measured once)
``mpc/activation_ratio``            ``peak_activation_bytes / backprop_activation_bytes``
``mpc/block_XX/loss_epoch``         epoch mean of the loss, every step counted
``mpc/block_XX/accuracy_epoch``     epoch accuracy, every step counted
==================================  ==============================================================
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelSummary
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor

from lightning_mpc.core.engine import HorizonEngine
from lightning_mpc.core.heads import default_local_loss
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.lightning.batches import EXAMPLE_SAMPLES, call_forward, example_input
from lightning_mpc.lightning.mixin import MPCMixin, batch_target
from lightning_mpc.telemetry.metrics import BlockwiseRatio, block_hits
from lightning_mpc.telemetry.probes import (
    BackpropMemory,
    BlockInputCapture,
    backprop_block_gradients,
    backprop_memory,
    block_grad_norms,
    block_parameters,
    first_block_input,
    gradient_alignment,
)
from lightning_mpc.telemetry.records import StepRecord, StepRecorder
from lightning_mpc.telemetry.summary import PartitionRow, format_bytes, partition_rows, render_partition
from lightning_mpc.telemetry.wandb_extras import block_charts, define_block_metrics

__all__ = ["MPCTelemetry", "attach_telemetry", "block_key", "validate_telemetry"]

PREFIX = "mpc"
_HISTORY_LIMIT = 4096
"""Points per block kept for the W&B line chart; older points are thinned out beyond this."""
_TABLE_COLUMNS = [
    "epoch",
    "block",
    "module",
    "loss",
    "accuracy",
    "activation_bytes",
    "alignment",
    "grad_norm",
    "forward_ms",
    "backward_ms",
]
_MEASURED = ("activation_bytes", "alignment", "grad_norm", "forward_ms", "backward_ms")
_HEADLINE = frozenset(f"{PREFIX}/{name}" for name in ("alignment", "peak_activation_bytes", "activation_ratio"))
"""The whole-network figures logged through ``LightningModule.log`` (the rest goes straight to the loggers)."""


def block_key(index: int, name: str) -> str:
    """The metric name of block ``index``: ``block_key(3, "loss") == "mpc/block_03/loss"``."""
    return f"{PREFIX}/block_{index:02d}/{name}"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _classification_target(batch: Any) -> Tensor | None:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        return None
    target = batch[1]
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex():
        return None
    return None if target.dtype == torch.bool else target


class MPCTelemetry(Callback):
    """Per-block telemetry of horizon (MPC) training, logged through Lightning's loggers.

    What it costs: on most steps, the local losses and the heads' top-1 predictions are accumulated for
    the epoch figures (a few tensor operations, no device synchronisation). On the steps Lightning writes
    to its loggers (``Trainer(log_every_n_steps=...)``) it also counts activation bytes, times every block
    (synchronising the device on CUDA) and computes gradient norms; every ``alignment_every`` steps it runs
    one extra back-propagation to measure alignment. It keeps Python numbers and detached scalars only.

    Args:
        alignment_every: measure the alignment every this many optimizer steps (``0``: never). It costs
            one back-propagation (forward and backward, with back-propagation's activation memory) on
            those steps. Measured on steps Lightning writes to its loggers, so use a multiple of
            ``Trainer(log_every_n_steps)``.
        log_every_n_steps: measure memory and time every this many optimizer steps; ``None`` follows
            ``Trainer(log_every_n_steps)``. Values are only written on steps where Lightning writes logs,
            so use a multiple of it.
        summary: print the partition summary (a rich table) at fit start: ``None`` follows the trainer's
            model summary (``Trainer(enable_model_summary=...)``).
        accuracy: log each head's accuracy when ``batch[1]`` holds integer class labels.
        memory: count activation bytes (:class:`~lightning_mpc.SavedTensorMeter`) on measured steps and
            measure back-propagation's bytes once, on the first batch.
        timing: time every block's forward and backward on measured steps.
        wandb: when a ``WandbLogger`` is attached, add metric definitions, a per-epoch table, charts and
            the run config.

    Attributes:
        partition: the partition summary rows (after fit start; ``None`` if it was not computed).
        backprop_activation_bytes: back-propagation's activation bytes on the first batch.

    Example::

        trainer = L.Trainer(
            strategy=MPCStrategy(horizon=2),
            callbacks=[MPCTelemetry(alignment_every=100)],
            logger=WandbLogger(project="mpc"),
            log_every_n_steps=50,
        )
    """

    def __init__(
        self,
        alignment_every: int = 0,
        log_every_n_steps: int | None = None,
        summary: bool | None = None,
        accuracy: bool = True,
        memory: bool = True,
        timing: bool = True,
        wandb: bool = True,
    ) -> None:
        if isinstance(alignment_every, bool) or not isinstance(alignment_every, int) or alignment_every < 0:
            raise ValueError(
                f"alignment_every must be an integer >= 0, got {alignment_every!r}. "
                "HINT: 0 turns the alignment probe off; N measures it every N optimizer steps."
            )
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 1
        ):
            raise ValueError(
                f"log_every_n_steps must be None or an integer >= 1, got {log_every_n_steps!r}. "
                "HINT: None follows Trainer(log_every_n_steps)."
            )
        self.alignment_every = alignment_every
        self.log_every_n_steps = log_every_n_steps
        self.summary = summary
        self.accuracy = accuracy
        self.memory = memory
        self.timing = timing
        self.wandb = wandb
        self.partition: list[PartitionRow] | None = None
        self.backprop_activation_bytes: int | None = None
        self._reset_fit_state()

    # ------------------------------------------------------------------ state
    def _reset_fit_state(self) -> None:
        self._engine: HorizonEngine | None = None
        self._recorder: StepRecorder | None = None
        self._capture: BlockInputCapture | None = None
        self._device = torch.device("cpu")
        self._num_blocks = 0
        self._measure = False
        self._align = False
        self._bp_pending = False
        self._target: Tensor | None = None
        self._predictions: dict[int, Tensor] = {}
        self._snapshot: list[list[Tensor | None]] | None = None
        self._step_accuracy: tuple[tuple[int, ...], Tensor, float] | None = None
        self._loss_sum: Tensor | None = None
        self._loss_steps = 0
        self._final_sum: Tensor | None = None
        self._final_steps = 0
        self._accuracy_blocks: tuple[int, ...] | None = None
        self._hits_sum: Tensor | None = None
        self._predictions_seen = 0.0
        self._pending: dict[str, Tensor | float] = {}
        self._headline: dict[str, float] = {}
        self._final_loss: Tensor | None = None
        self._loss_epoch: BlockwiseRatio | None = None
        self._accuracy_epoch: BlockwiseRatio | None = None
        self._measured: dict[str, list[list[float]]] = {}
        self._history_steps: list[int] = []
        self._history_loss: list[list[float | None]] = []
        self._warned: set[str] = set()
        self._bytes_per_sample: float | None = None

    @property
    def active(self) -> bool:
        """Whether the callback is attached to an engine (during ``fit``, with at least one logger)."""
        return self._recorder is not None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    # ------------------------------------------------------------------ fit start: summary and W&B
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_fit_state()
        self.partition = None
        self.backprop_activation_bytes = None
        engine = _strategy_engine(trainer)
        if engine is None:
            self._warn_once(
                "strategy",
                f"MPCTelemetry found no horizon engine on {type(trainer.strategy).__name__}, so it logs nothing. "
                "HINT: train with Trainer(strategy=MPCStrategy(...)) or strategy='mpc'.",
            )
            return
        self._engine = engine
        show = self.summary if self.summary is not None else any(isinstance(c, ModelSummary) for c in trainer.callbacks)
        wandb_loggers = self._wandb_loggers(trainer)
        if not (show or wandb_loggers):
            return
        memory, reason = self._example_memory(trainer, pl_module, engine)
        self.partition = partition_rows(pl_module, engine.blocks, engine.heads, engine.depths, memory)
        self._bytes_per_sample = None if memory is None else memory.total_bytes / max(memory.batch_size, 1)
        if show:
            self._print_summary(engine, memory, reason)
        if wandb_loggers and trainer.is_global_zero:
            self._wandb_setup(trainer, engine, wandb_loggers)

    def _example_memory(
        self, trainer: pl.Trainer, module: pl.LightningModule, engine: HorizonEngine
    ) -> tuple[BackpropMemory | None, str | None]:
        """Block output shapes and activation bytes per sample, on two samples of the first batch."""
        blocks = engine.blocks
        was_training = module.training
        try:
            with torch.random.fork_rng(devices=_cuda_devices(module.device)):
                example = example_input(trainer, module, "measure back-propagation's memory")
                example = move_data_to_device(example, module.device)
                module.eval()
                with torch.no_grad(), preserved_buffers([module]):
                    x0 = first_block_input(blocks, lambda: call_forward(module, blocks, example))
            # A copy: a slice of the batch would keep (and count) the whole batch's storage.
            x0 = (x0[:EXAMPLE_SAMPLES] if x0.dim() > 0 else x0).clone()
            module.train()
            memory = backprop_memory(
                blocks,
                x0,
                exclude=list(module.parameters()),
                forward_context=trainer.precision_plugin.train_step_context,
            )
            return memory, None
        except Exception as err:  # the summary must never stop training
            return None, f"{type(err).__name__}: {err}"
        finally:
            module.train(was_training)

    @rank_zero_only
    def _print_summary(self, engine: HorizonEngine, memory: BackpropMemory | None, reason: str | None) -> None:
        assert self.partition is not None
        from rich import get_console

        horizon = engine.horizon
        title = f"MPC partition: {engine.num_blocks} blocks, horizon {horizon}, mode {engine.mode!r}"
        if memory is not None:
            caption = (
                f"Back-propagation holds about {format_bytes(memory.total_bytes / max(memory.batch_size, 1))} of "
                "activations per sample (block outputs shared by consecutive blocks counted once)."
            )
        else:
            caption = f"Shapes and activation bytes not measured ({reason})."
        get_console().print(render_partition(self.partition, title=title, caption=caption))

    # ------------------------------------------------------------------ train start / end
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        engine = _strategy_engine(trainer) or self._engine  # a callback may have replaced it since fit start
        if engine is None or not trainer.loggers:
            return
        self._engine = engine
        if engine.observer is not None and engine.observer is not self._recorder:
            self._warn_once(
                "observer",
                f"MPCTelemetry is off: the horizon engine already has an observer ({type(engine.observer).__name__}). "
                "HINT: use one MPCTelemetry per trainer.",
            )
            return
        self._num_blocks = engine.num_blocks
        self._device = pl_module.device
        self._recorder = StepRecorder(engine.num_blocks, timing=False, on_prediction=self._on_prediction)
        engine.observer = self._recorder
        self._capture = BlockInputCapture(engine.blocks)
        dtype = torch.float32 if self._device.type == "mps" else torch.float64
        self._loss_epoch = BlockwiseRatio(self._num_blocks, dtype).to(self._device)
        self._accuracy_epoch = BlockwiseRatio(self._num_blocks, dtype).to(self._device)
        self._bp_pending = self.memory and self.backprop_activation_bytes is None
        self._reset_epoch()
        every = trainer.log_every_n_steps
        for name, value in (("log_every_n_steps", self.log_every_n_steps), ("alignment_every", self.alignment_every)):
            if value and every and value % every:
                self._warn_once(
                    name,
                    f"MPCTelemetry({name}={value}) is not a multiple of Trainer(log_every_n_steps={every}); it is "
                    f"measured only on steps that are multiples of both. HINT: use a multiple of {every}.",
                )

    def _follow(self, trainer: pl.Trainer, engine: HorizonEngine | None) -> bool:
        """Move to the engine the strategy uses now (``set_horizon`` replaces it); ``False`` if impossible."""
        old, recorder = self._engine, self._recorder
        if old is not None and old.observer is recorder:
            old.observer = None
        if engine is None or engine.num_blocks != self._num_blocks or engine.observer is not None:
            self._warn_once(
                "engine",
                "MPCTelemetry stopped: the strategy's horizon engine was replaced by one it cannot observe. "
                "HINT: keep one MPCTelemetry per trainer and the same blocks during fit.",
            )
            self._detach()
            return False
        engine.observer = recorder
        self._engine = engine
        if self._wandb_loggers(trainer) and trainer.is_global_zero:
            update = {"horizon": engine.horizon, "mode": engine.mode, "learns_from": list(engine.depths)}
            for logger in self._wandb_loggers(trainer):
                with contextlib.suppress(Exception):  # W&B extras must never stop training
                    logger.experiment.config.update({PREFIX: self._config(engine) | update}, allow_val_change=True)
        return True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._detach()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._detach()

    def _detach(self) -> None:
        recorder = self._recorder
        if recorder is not None:
            recorder.stop_memory()
            if self._engine is not None and self._engine.observer is recorder:
                self._engine.observer = None
        if self._capture is not None:
            self._capture.remove()
        self._recorder = None
        self._capture = None
        self._target = None
        self._predictions = {}
        self._snapshot = None

    # ------------------------------------------------------------------ steps
    def _reset_epoch(self) -> None:
        if self._loss_epoch is not None:
            self._loss_epoch.reset()
        if self._accuracy_epoch is not None:
            self._accuracy_epoch.reset()
        self._loss_sum, self._loss_steps, self._final_sum, self._final_steps = None, 0, None, 0
        self._hits_sum, self._predictions_seen = None, 0.0
        self._measured = {name: [[] for _ in range(self._num_blocks)] for name in _MEASURED}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._recorder is not None:
            self._reset_epoch()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        recorder = self._recorder
        if recorder is None:
            return
        engine = _strategy_engine(trainer)
        if engine is not self._engine and not self._follow(trainer, engine):
            return
        _forget_step_values(trainer)
        loop = trainer.fit_loop.epoch_loop
        step = loop._batches_that_stepped + 1
        writes = (trainer._logger_connector.should_update_logs or bool(trainer.fast_dev_run)) and (
            not loop._should_accumulate()
        )
        every = self.log_every_n_steps
        self._measure = writes and (every is None or step % every == 0)
        self._align = writes and self.alignment_every > 0 and step % self.alignment_every == 0
        self._target = _classification_target(batch) if self.accuracy else None
        self._predictions = {}
        recorder.timing = self._measure and self.timing
        recorder.device = self._device if self._measure and self._device.type == "cuda" else None
        recorder.keep_output_gradient = self._align
        assert self._capture is not None
        if self._align or self._bp_pending:
            self._capture.arm(random_state=self._align)
        self._snapshot = None
        if self._align and batch_idx % trainer.accumulate_grad_batches != 0:
            # Earlier micro-batches of this accumulation window already wrote gradients: keep them to subtract.
            self._snapshot = [
                [None if p.grad is None else p.grad.detach().clone() for p in group]
                for group in block_parameters(self._engine.blocks if self._engine is not None else [])
            ]
        if self._measure and self.memory:
            recorder.start_memory(exclude=pl_module.parameters())

    def _on_prediction(self, index: int, prediction: Tensor) -> None:
        target = self._target
        if target is None or not isinstance(prediction, Tensor) or not prediction.is_floating_point():
            return
        if prediction.dim() != target.dim() + 1 or prediction.shape[:-1] != target.shape or prediction.shape[-1] < 2:
            return
        # Kept detached (no graph) until the batch ends, where all heads' top-1 hits are counted at once.
        self._predictions[index] = prediction.detach()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        recorder = self._recorder
        if recorder is None:
            return
        recorder.stop_memory()  # the step's graphs are released; probes below must not be counted
        if self._align:
            self._align = False
            self._log_alignment(trainer, pl_module)

    def _log_alignment(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._recorder is not None and self._capture is not None and self._engine is not None
        record = self._recorder.record
        x0, state, grad = self._capture.input, self._capture.random_state, record.output_gradient
        if x0 is None or grad is None or not record.complete:
            self._warn_once(
                "alignment",
                "MPCTelemetry could not measure the alignment: the step did not run every block from one input "
                "or its final loss does not depend on the last block. HINT: return the loss of the model output "
                "from training_step.",
            )
            return
        blocks, heads = self._engine.blocks, self._engine.heads
        params = block_parameters(blocks)
        snapshot = self._snapshot
        update: list[list[Tensor | None]] = []
        for index, group in enumerate(params):
            row: list[Tensor | None] = []
            for position, p in enumerate(group):
                before = None if snapshot is None else snapshot[index][position]
                grad_now = None if p.grad is None else p.grad.detach()
                row.append(grad_now if before is None or grad_now is None else grad_now - before)
            update.append(row)
        self._snapshot = None
        reference = backprop_block_gradients(
            blocks,
            heads,
            x0,
            grad_output=grad,
            random_state=state,
            forward_context=trainer.precision_plugin.train_step_context,
        )
        alignment = gradient_alignment(update, reference, params)
        for index, value in enumerate(alignment.blocks):
            if math.isfinite(value):
                self._pending[block_key(index, "alignment")] = value
                self._measured["alignment"][index].append(value)
        if math.isfinite(alignment.total):
            self._headline[f"{PREFIX}/alignment"] = alignment.total

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._recorder is None or not self._measure or self._engine is None:
            return
        for index, norm in enumerate(block_grad_norms(self._engine.blocks)):
            if norm is not None:
                self._pending[block_key(index, "grad_norm")] = norm  # a tensor: converted with the rest, one sync

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        recorder = self._recorder
        if recorder is None:
            return
        recorder.stop_memory()
        record = recorder.record
        final = _returned_loss(outputs, trainer.accumulate_grad_batches)
        try:
            losses = self._accumulate_epoch(record, final)
            self._final_loss = final
            if self._bp_pending and self._capture is not None and self._capture.input is not None:
                self._measure_backprop(trainer, pl_module, batch, self._capture.input)
            if self._measure and record.complete:
                self._collect_step(record, losses)
            self._write(trainer, pl_module)
        finally:
            if self._capture is not None:
                self._capture.clear()
            recorder.clear()
            self._target = None
            self._predictions = {}
            self._measure = False
            self._align = False
            self._snapshot = None
            self._pending = {}
            self._headline = {}
            self._final_loss = None

    def _accumulate_epoch(self, record: StepRecord, final: Tensor | None) -> Tensor | None:
        """Add the step's losses and hits to the epoch sums; returns the heads' losses stacked (or ``None``).

        A handful of tensor operations per step, whatever the depth, and no device synchronisation; the sums
        go through the torchmetrics metrics (and their cross-process reduction) once, at the epoch end.
        """
        head_losses = record.losses[: self._num_blocks - 1]
        losses = None
        if head_losses and all(loss is not None for loss in head_losses):
            losses = torch.stack(head_losses)  # type: ignore[arg-type]
            self._loss_sum = losses.double() if self._loss_sum is None else self._loss_sum.add_(losses)
            self._loss_steps += 1
        if final is not None:
            self._final_sum = final.double() if self._final_sum is None else self._final_sum.add_(final)
            self._final_steps += 1
        self._step_accuracy = None
        if self._predictions and self._target is not None:
            blocks = tuple(sorted(self._predictions))
            if self._accuracy_blocks is None:
                self._accuracy_blocks = blocks
            if blocks == self._accuracy_blocks:
                predictions = [self._predictions[i] for i in blocks]
                if any(p.shape != predictions[0].shape for p in predictions):  # e.g. a head with other classes
                    predictions = [p.argmax(-1) for p in predictions]
                hits = block_hits(predictions, self._target)
                self._hits_sum = hits.double() if self._hits_sum is None else self._hits_sum.add_(hits)
                count = float(self._target.numel())
                self._predictions_seen += count
                self._step_accuracy = (blocks, hits, count)
            else:
                self._warn_once(
                    "accuracy_blocks",
                    f"MPCTelemetry: the blocks with class predictions changed from {list(self._accuracy_blocks)} to "
                    f"{list(blocks)}; accuracy is only accumulated for steps like the first.",
                )
        return losses

    def _epoch_values(self) -> tuple[list[float], list[float]]:
        """Epoch mean loss and accuracy per block (``nan`` where there is none), reduced across processes."""
        assert self._loss_epoch is not None and self._accuracy_epoch is not None
        count = self._num_blocks
        numerator = torch.zeros(count, dtype=self._loss_epoch.numerator.dtype, device=self._device)
        denominator = torch.zeros_like(numerator)
        if self._loss_sum is not None:
            numerator[: count - 1] += self._loss_sum.to(numerator.dtype)
            denominator[: count - 1] += self._loss_steps
        if self._final_sum is not None:
            numerator[count - 1] += self._final_sum.to(numerator.dtype)
            denominator[count - 1] += self._final_steps
        self._loss_epoch.update(numerator, denominator)
        numerator, denominator = torch.zeros_like(numerator), torch.zeros_like(numerator)
        if self._hits_sum is not None and self._accuracy_blocks is not None:
            index = torch.tensor(self._accuracy_blocks, device=self._device)
            numerator[index] = self._hits_sum.to(numerator.dtype)
            denominator[index] = self._predictions_seen
        self._accuracy_epoch.update(numerator, denominator)
        values = torch.stack([_compute(self._loss_epoch), _compute(self._accuracy_epoch)]).tolist()
        return values[0], values[1]

    def _collect_step(self, record: StepRecord, losses: Tensor | None) -> None:
        """Put the measured step's per-block figures in the pending metrics."""
        pending, headline = self._pending, self._headline
        last = self._num_blocks - 1
        if losses is not None:
            for index in range(last):
                pending[block_key(index, "loss")] = losses[index]
        if self._final_loss is not None:
            pending[block_key(last, "loss")] = self._final_loss
        if self._step_accuracy is not None:
            blocks, hits, count = self._step_accuracy
            accuracy = hits.double() / count
            for position, index in enumerate(blocks):
                pending[block_key(index, "accuracy")] = accuracy[position]
        measured = self._measured
        for index in range(self._num_blocks):
            act, cuda, forward = record.activation_bytes[index], record.cuda_peak_bytes[index], record.forward_ms[index]
            if act is not None:
                pending[block_key(index, "activation_bytes")] = float(act)
                measured["activation_bytes"][index].append(float(act))
            if cuda is not None:
                pending[block_key(index, "cuda_peak_bytes")] = float(cuda)
            if self.timing:
                if forward is not None:
                    pending[block_key(index, "forward_ms")] = forward
                    measured["forward_ms"][index].append(forward)
                pending[block_key(index, "backward_ms")] = record.backward_ms[index]
                measured["backward_ms"][index].append(record.backward_ms[index])
        if record.peak_activation_bytes is not None:
            headline[f"{PREFIX}/peak_activation_bytes"] = float(record.peak_activation_bytes)
            if self.backprop_activation_bytes:
                pending[f"{PREFIX}/backprop_activation_bytes"] = float(self.backprop_activation_bytes)
                headline[f"{PREFIX}/activation_ratio"] = record.peak_activation_bytes / self.backprop_activation_bytes
        if record.cuda_peak_step_bytes is not None:
            pending[f"{PREFIX}/cuda_peak_bytes"] = float(record.cuda_peak_step_bytes)

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the step's metrics: per-block series straight to every logger, whole-network figures via ``log``.

        Lightning's ``LightningModule.log`` costs a fraction of a millisecond per key; the per-block series
        (several keys per block) go to ``logger.log_metrics`` in one call per logger instead, at the step
        Lightning writes its own metrics with, as ``LearningRateMonitor`` and ``DeviceStatsMonitor`` do. The
        three whole-network figures go through ``log``, so they reach ``trainer.callback_metrics`` (for
        ``ModelCheckpoint``/``EarlyStopping``) as well as the loggers.
        """
        pending, headline = self._pending, self._headline
        if not pending and not headline:
            return
        tensors = [key for key, value in pending.items() if isinstance(value, Tensor)]
        if tensors:  # one device synchronisation for every tensor of the step
            parts = [pending[key].detach().double().reshape(()) for key in tensors]  # type: ignore[union-attr]
            stacked = torch.stack(parts)
            values = stacked.tolist()
            pending.update(zip(tensors, values))
        scalars = {key: float(value) for key, value in pending.items()}
        for key, value in scalars.items():
            if key.endswith("/grad_norm"):
                self._measured["grad_norm"][int(key.split("/")[1][len("block_") :])].append(value)
        if scalars:
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            scalars["epoch"] = trainer.current_epoch
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)
            losses = [scalars.get(block_key(index, "loss")) for index in range(self._num_blocks)]
            if any(v is not None for v in losses):
                self._append_history(step, losses)
        if headline:
            pl_module.log_dict(headline, on_step=True, on_epoch=False, batch_size=1)

    def _append_history(self, step: int, values: list[float | None]) -> None:
        self._history_steps.append(step)
        self._history_loss.append(values)
        if len(self._history_steps) > _HISTORY_LIMIT:
            self._history_steps = self._history_steps[::2]
            self._history_loss = self._history_loss[::2]

    def _measure_backprop(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, x0: Tensor) -> None:
        assert self._engine is not None
        self._bp_pending = False
        loss = _final_loss(module, batch)
        common = {"exclude": list(module.parameters()), "forward_context": trainer.precision_plugin.train_step_context}
        try:
            try:
                memory = backprop_memory(self._engine.blocks, x0, loss=loss, **common)  # type: ignore[arg-type]
            except Exception:
                if loss is None:
                    raise
                memory = backprop_memory(self._engine.blocks, x0, **common)  # type: ignore[arg-type]
        except Exception as err:
            self._warn_once("backprop", f"MPCTelemetry could not measure back-propagation's activation bytes: {err}")
            return
        self.backprop_activation_bytes = memory.total_bytes

    # ------------------------------------------------------------------ epoch end
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._recorder is None or self._loss_epoch is None or self._accuracy_epoch is None:
            return
        loss, accuracy = self._epoch_values()
        metrics: dict[str, float] = {}
        for index in range(self._num_blocks):
            if math.isfinite(loss[index]):
                metrics[block_key(index, "loss_epoch")] = loss[index]
            if math.isfinite(accuracy[index]):
                metrics[block_key(index, "accuracy_epoch")] = accuracy[index]
        if metrics:
            # At the step Lightning writes its own epoch metrics with.
            metrics["epoch"] = trainer.current_epoch
            step = max(trainer.fit_loop.epoch_loop._batches_that_stepped - 1, 0)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        wandb_loggers = self._wandb_loggers(trainer)
        if wandb_loggers and trainer.is_global_zero:
            self._wandb_epoch(trainer, wandb_loggers, loss, accuracy)
        self._reset_epoch()

    # ------------------------------------------------------------------ W&B
    def _wandb_loggers(self, trainer: pl.Trainer) -> list[WandbLogger]:
        if not self.wandb:
            return []
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def _config(self, engine: HorizonEngine) -> dict[str, Any]:
        heads = []
        for head in engine.heads:
            spec = getattr(head, "spec", None)
            heads.append(spec.to_dict() if spec is not None and hasattr(spec, "to_dict") else type(head).__name__)
        return {
            "horizon": engine.horizon,
            "mode": engine.mode,
            "num_blocks": engine.num_blocks,
            "learns_from": list(engine.depths),
            "partition": [row.to_dict() for row in self.partition or []],
            "heads": heads,
            "backprop_activation_bytes_per_sample": self._bytes_per_sample,
            "telemetry": {
                "alignment_every": self.alignment_every,
                "log_every_n_steps": self.log_every_n_steps,
                "memory": self.memory,
                "timing": self.timing,
            },
        }

    def _wandb_setup(self, trainer: pl.Trainer, engine: HorizonEngine, loggers: list[WandbLogger]) -> None:
        config = self._config(engine)
        for logger in loggers:
            try:
                experiment = logger.experiment
                define_block_metrics(experiment, PREFIX, engine.num_blocks)
                experiment.config.update({PREFIX: config}, allow_val_change=True)
                if self.partition:
                    logger.log_table(
                        f"{PREFIX}/partition",
                        columns=list(self.partition[0].to_dict()),
                        data=[[_table_value(v) for v in row.to_dict().values()] for row in self.partition],
                        step=trainer.fit_loop.epoch_loop._batches_that_stepped,
                    )
            except Exception as err:  # W&B extras must never stop training
                self._warn_once("wandb", f"MPCTelemetry could not set up the W&B extras: {type(err).__name__}: {err}")

    def _wandb_epoch(
        self, trainer: pl.Trainer, loggers: list[WandbLogger], loss: list[float], accuracy: list[float]
    ) -> None:
        modules = [row.module for row in self.partition] if self.partition else ["?"] * self._num_blocks
        rows = []
        for index in range(self._num_blocks):
            measured = {name: _mean(self._measured[name][index]) for name in _MEASURED}
            rows.append(
                [
                    trainer.current_epoch,
                    index,
                    modules[index],
                    _finite(loss[index]),
                    _finite(accuracy[index]),
                    measured["activation_bytes"],
                    measured["alignment"],
                    measured["grad_norm"],
                    measured["forward_ms"],
                    measured["backward_ms"],
                ]
            )
        step = max(trainer.fit_loop.epoch_loop._batches_that_stepped - 1, 0)
        for logger in loggers:
            try:
                charts = block_charts(PREFIX, self._history_steps, self._history_loss, [row[5] for row in rows])
                logger.log_table(f"{PREFIX}/blocks", columns=list(_TABLE_COLUMNS), data=rows, step=step)
                if charts:
                    logger.log_metrics(charts, step=step)
            except Exception as err:  # W&B extras must never stop training
                self._warn_once("wandb_epoch", f"MPCTelemetry could not log the W&B epoch table: {err}")


# ---------------------------------------------------------------------- helpers
def _strategy_engine(trainer: pl.Trainer) -> HorizonEngine | None:
    """The horizon engine the trainer's MPC strategy uses now (``None`` under other strategies)."""
    engine = getattr(getattr(trainer.strategy, "rule", None), "engine", None)
    return engine if isinstance(engine, HorizonEngine) else None


def _forget_step_values(trainer: pl.Trainer) -> None:
    """Stop Lightning from writing our last step values again at its next logging steps.

    Lightning keeps every ``on_step`` value and writes it at each logging step of the epoch until it is
    logged again; telemetry measured every few steps would then be repeated as if it had been measured
    on every step. The values stay in ``trainer.callback_metrics``.
    """
    results = getattr(trainer, "_results", None)
    if results is None:
        return
    for item in results.values():
        meta = getattr(item, "meta", None)
        if meta is not None and meta.on_step and meta.name in _HEADLINE and not item.has_reset:
            item.reset()


def _compute(metric: BlockwiseRatio) -> Tensor:
    """The metric's value, ``nan`` everywhere before any update (without torchmetrics' warning)."""
    if metric.update_count == 0:
        return torch.full((metric.num_blocks,), float("nan"), device=metric.numerator.device)
    return metric.compute().float()


def _table_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return str(list(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cuda_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


def _returned_loss(outputs: Any, accumulate: int) -> Tensor | None:
    """The loss ``training_step`` returned (Lightning hands it over divided by the accumulation)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        return None
    loss = loss.detach() if loss.dim() == 0 else loss.detach().reshape(())
    return loss * accumulate if accumulate != 1 else loss


def _final_loss(module: pl.LightningModule, batch: Any) -> Any:
    """The loss applied to the model output in the back-propagation probe: the module's local loss."""
    if isinstance(module, MPCMixin):
        return lambda output: module.local_loss(output, batch)
    try:
        target = batch_target(batch)
    except TypeError:
        return None
    return lambda output: default_local_loss(output, target)


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
    """Add the telemetry callback to ``trainer`` unless the user already gave one.

    Called by the MPC strategies at setup. An :class:`MPCTelemetry` in ``Trainer(callbacks=...)`` always
    wins; otherwise ``telemetry`` (``True`` for the defaults, an instance for a configured one, ``False``
    for none) decides. The callback goes before the checkpoint callbacks, so that they can monitor its
    metrics.

    Returns:
        The callback in use, or ``None``.
    """
    for callback in trainer.callbacks:
        if isinstance(callback, MPCTelemetry):
            return callback
    if telemetry is False or telemetry is None:
        return None
    if telemetry is True:
        callback = MPCTelemetry()
    elif isinstance(telemetry, MPCTelemetry):
        callback = telemetry
    else:
        raise TypeError(
            f"telemetry must be a bool or an MPCTelemetry, got {type(telemetry).__name__}. "
            "HINT: pass telemetry=False to turn it off, or MPCTelemetry(...) to configure it."
        )
    position = next((i for i, c in enumerate(trainer.callbacks) if isinstance(c, Checkpoint)), len(trainer.callbacks))
    trainer.callbacks.insert(position, callback)
    return callback
