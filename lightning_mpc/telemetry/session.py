"""The telemetry of one ``fit`` without a Trainer: step records in, metric dictionaries out.

:class:`TelemetrySession` turns a :class:`~lightning_mpc.telemetry.records.StepRecord` (and what the Lightning
callback adds: the loss ``training_step`` returned, gradient norms, the alignment) into the per-block series
of one measured step, accumulates every step's losses and top-1 hits for the epoch figures, and keeps the
history and per-epoch means the W&B charts and tables show. It never synchronises with the device on its own:
per-step tensors stay tensors until :meth:`TelemetrySession.resolve` turns a whole step's worth into floats
at once.

Metric names (``<prefix>`` is the rule's metric prefix, ``mpc`` for MPC; ``XX`` the block index):

==================================  ==============================================================
``<prefix>/block_XX/loss``          the block's local loss (the last block: the loss ``training_step`` returned)
``<prefix>/block_XX/accuracy``      top-1 accuracy of the block's prediction, when ``batch[1]`` holds classes
``<prefix>/block_XX/activation_bytes``  real memory (allocator bytes above the step's start) at its peak
                                    while the block ran: its forward, its local loss, the backwards meanwhile
``<prefix>/block_XX/saved_bytes``   breakdown (``saved_bytes=True``): bytes saved for backward then
``<prefix>/block_XX/grad_norm``     2-norm of the block's update (``.grad`` before clipping)
``<prefix>/block_XX/forward_ms``    the block's forward plus its local loss
``<prefix>/block_XX/backward_ms``   every backward the rule ran for the block
``<prefix>/block_XX/alignment``     cosine between the block's update and back-propagation's gradient
``<prefix>/block_XX/<signal>``      the rule's own measurements (goodness, angles, ...)
``<prefix>/alignment``              the same cosine over the whole network
``<prefix>/peak_activation_bytes``  the step's real peak (allocator bytes)
``<prefix>/backprop_activation_bytes``  back-propagation's real peak on the first measured batch (window model)
``<prefix>/activation_ratio``       ``peak_activation_bytes / backprop_activation_bytes``
``<prefix>/block_XX/loss_epoch``    epoch mean of the loss, every step counted (also ``accuracy_epoch``)
==================================  ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mpc.telemetry.metrics import BlockwiseRatio, block_hits
from lightning_mpc.telemetry.records import StepRecord

__all__ = ["MEASURED", "TelemetrySession", "block_key", "network_key"]

MEASURED = ("activation_bytes", "alignment", "grad_norm", "forward_ms", "backward_ms")
"""Per-block series averaged over the epoch's measured steps for the W&B table."""
HISTORY_LIMIT = 4096
"""Points per block kept for the W&B line chart; older points are thinned out beyond this."""


def block_key(prefix: str, index: int, name: str) -> str:
    """The metric name of block ``index``: ``block_key("mpc", 3, "loss") == "mpc/block_03/loss"``."""
    return f"{prefix}/block_{index:02d}/{name}"


def network_key(prefix: str, name: str) -> str:
    """The metric name of a whole-network figure: ``network_key("mpc", "alignment") == "mpc/alignment"``."""
    return f"{prefix}/{name}"


def _compute(metric: BlockwiseRatio) -> Tensor:
    """The metric's value, ``nan`` everywhere before any update (without torchmetrics' warning)."""
    if metric.update_count == 0:
        return torch.full((metric.num_blocks,), float("nan"), device=metric.numerator.device)
    return metric.compute().float()


class TelemetrySession:
    """Bookkeeping of the telemetry of one fit.

    Args:
        prefix: the rule's metric prefix (``"mpc"``).
        num_blocks: the number of blocks (the last block's loss is the loss ``training_step`` returned).
        device: where the epoch sums live (the training device).
    """

    def __init__(self, prefix: str, num_blocks: int, device: torch.device | None = None) -> None:
        self.prefix = prefix
        self.num_blocks = num_blocks
        self.device = device or torch.device("cpu")
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._loss_epoch = BlockwiseRatio(max(num_blocks, 1), dtype).to(self.device)
        self._accuracy_epoch = BlockwiseRatio(max(num_blocks, 1), dtype).to(self.device)
        self.history_steps: list[int] = []
        self.history_loss: list[list[float | None]] = []
        self.reset_epoch()

    # ------------------------------------------------------------------ epoch accumulation
    def reset_epoch(self) -> None:
        """Start a new epoch's sums."""
        self._loss_epoch.reset()
        self._accuracy_epoch.reset()
        self._loss_sums: dict[int, Tensor] = {}
        self._loss_counts: dict[int, int] = {}
        self._hits: Tensor | None = None
        self._hit_blocks: tuple[int, ...] | None = None
        self._seen = 0.0
        self.measured: dict[str, list[list[float]]] = {name: [[] for _ in range(self.num_blocks)] for name in MEASURED}

    def accumulate(
        self,
        record: StepRecord,
        final_loss: Tensor | None,
        predictions: Mapping[int, Tensor],
        target: Tensor | None,
    ) -> tuple[dict[int, Tensor], tuple[tuple[int, ...], Tensor, float] | None]:
        """Add one step to the epoch sums (a few tensor operations, no device synchronisation).

        Returns:
            The step's loss per block (the last block's is ``final_loss``) and its accuracy as ``(blocks,
            hits, count)`` when class predictions and targets were available, else ``None``.
        """
        losses = {index: loss for index, loss in record.losses.items() if index < self.num_blocks}
        if final_loss is not None and self.num_blocks:
            losses[self.num_blocks - 1] = final_loss
        for index, loss in losses.items():
            value = loss.detach().double().reshape(())
            self._loss_sums[index] = value if index not in self._loss_sums else self._loss_sums[index] + value
            self._loss_counts[index] = self._loss_counts.get(index, 0) + 1
        accuracy = None
        usable = {i: p for i, p in predictions.items() if i < self.num_blocks}
        if usable and target is not None:
            blocks = tuple(sorted(usable))
            if self._hit_blocks is None:
                self._hit_blocks = blocks
            if blocks == self._hit_blocks:
                stacked = [usable[i] for i in blocks]
                if any(p.shape != stacked[0].shape for p in stacked):  # e.g. a head with other classes
                    stacked = [p.argmax(-1) for p in stacked]
                hits = block_hits(stacked, target)
                self._hits = hits.double() if self._hits is None else self._hits + hits
                count = float(target.numel())
                self._seen += count
                accuracy = (blocks, hits, count)
        return losses, accuracy

    def epoch_values(self) -> tuple[list[float], list[float]]:
        """The epoch's mean loss and accuracy per block (``nan`` where there is none), reduced across processes."""
        size = self._loss_epoch.num_blocks
        numerator = torch.zeros(size, dtype=self._loss_epoch.numerator.dtype, device=self.device)
        denominator = torch.zeros_like(numerator)
        for index, value in self._loss_sums.items():
            numerator[index] += value.to(numerator.device, numerator.dtype)
            denominator[index] += self._loss_counts[index]
        self._loss_epoch.update(numerator, denominator)
        numerator, denominator = torch.zeros_like(numerator), torch.zeros_like(numerator)
        if self._hits is not None and self._hit_blocks is not None:
            index = torch.tensor(self._hit_blocks, device=self.device)
            numerator[index] = self._hits.to(numerator.device, numerator.dtype)
            denominator[index] = self._seen
        self._accuracy_epoch.update(numerator, denominator)
        values = torch.stack([_compute(self._loss_epoch), _compute(self._accuracy_epoch)]).tolist()
        return values[0], values[1]

    def epoch_metrics(self, loss: Sequence[float], accuracy: Sequence[float]) -> dict[str, float]:
        """``<prefix>/block_XX/loss_epoch`` and ``accuracy_epoch`` of every block that has them (from :meth:`epoch_values`)."""
        metrics: dict[str, float] = {}
        for index in range(self.num_blocks):
            if math.isfinite(loss[index]):
                metrics[block_key(self.prefix, index, "loss_epoch")] = loss[index]
            if math.isfinite(accuracy[index]):
                metrics[block_key(self.prefix, index, "accuracy_epoch")] = accuracy[index]
        return metrics

    # ------------------------------------------------------------------ one measured step
    def step_metrics(
        self,
        record: StepRecord,
        losses: Mapping[int, Tensor],
        accuracy: tuple[tuple[int, ...], Tensor, float] | None,
        *,
        grad_norms: Sequence[Tensor | None] = (),
        alignment: tuple[Sequence[float], float] | None = None,
        backprop_bytes: int | None = None,
    ) -> tuple[dict[str, Tensor | float], dict[str, float]]:
        """The per-block series and the whole-network figures of a measured step.

        Returns:
            ``(per_block, headline)``: per-block values may still be tensors (see :meth:`resolve`); the
            headline (whole-network alignment, real peak, back-propagation's predicted peak and the ratio) is
            floats.
        """
        key = lambda index, name: block_key(self.prefix, index, name)
        series: dict[str, Tensor | float] = {}
        headline: dict[str, float] = {}
        for index, loss in losses.items():
            series[key(index, "loss")] = loss
        if accuracy is not None:
            blocks, hits, count = accuracy
            rate = hits.double() / count
            for position, index in enumerate(blocks):
                series[key(index, "accuracy")] = rate[position]
        for index, value in record.memory_bytes.items():
            series[key(index, "activation_bytes")] = float(value)
        for index, value in record.saved_bytes.items():
            series[key(index, "saved_bytes")] = float(value)
        for index, value in record.forward_ms.items():
            series[key(index, "forward_ms")] = value
        for index, value in record.backward_ms.items():
            series[key(index, "backward_ms")] = value
        for index, norm in enumerate(grad_norms):
            if norm is not None:
                series[key(index, "grad_norm")] = norm
        for (name, index), value in record.signals.items():
            series[network_key(self.prefix, name) if index is None else key(index, name)] = value
        if alignment is not None:
            per_block, total = alignment
            for index, value in enumerate(per_block):
                if math.isfinite(value):
                    series[key(index, "alignment")] = value
            if math.isfinite(total):
                headline[network_key(self.prefix, "alignment")] = total
        if record.peak_memory_bytes is not None:
            headline[network_key(self.prefix, "peak_activation_bytes")] = float(record.peak_memory_bytes)
            if backprop_bytes:
                series[network_key(self.prefix, "backprop_activation_bytes")] = float(backprop_bytes)
                headline[network_key(self.prefix, "activation_ratio")] = record.peak_memory_bytes / backprop_bytes
        if record.peak_saved_bytes is not None:
            series[network_key(self.prefix, "peak_saved_bytes")] = float(record.peak_saved_bytes)
        return series, headline

    def resolve(self, series: Mapping[str, Tensor | float], step: int) -> dict[str, float]:
        """Floats for every value (one device synchronisation for all tensors); notes measured means and history."""
        tensors = [name for name, value in series.items() if isinstance(value, Tensor)]
        values: dict[str, float] = {name: float(value) for name, value in series.items() if not isinstance(value, Tensor)}
        if tensors:
            stacked = torch.stack([series[name].detach().double().reshape(()) for name in tensors])  # type: ignore[union-attr]
            values.update(zip(tensors, stacked.tolist()))
        for name in MEASURED:
            for index in range(self.num_blocks):
                value = values.get(block_key(self.prefix, index, name))
                if value is not None and math.isfinite(value):
                    self.measured[name][index].append(value)
        losses = [values.get(block_key(self.prefix, index, "loss")) for index in range(self.num_blocks)]
        if any(value is not None for value in losses):
            self.history_steps.append(step)
            self.history_loss.append(losses)
            if len(self.history_steps) > HISTORY_LIMIT:
                self.history_steps = self.history_steps[::2]
                self.history_loss = self.history_loss[::2]
        return values

    def table_rows(self, epoch: int, modules: Sequence[str], loss: Sequence[float], accuracy: Sequence[float]) -> list[list[Any]]:
        """One row per block for the W&B epoch table (see :data:`TABLE_COLUMNS`)."""
        rows = []
        for index in range(self.num_blocks):
            means = {name: _mean(self.measured[name][index]) for name in MEASURED}
            rows.append(
                [
                    epoch,
                    index,
                    modules[index] if index < len(modules) else "?",
                    _finite(loss[index]),
                    _finite(accuracy[index]),
                    *(means[name] for name in MEASURED),
                ]
            )
        return rows


TABLE_COLUMNS = ["epoch", "block", "module", "loss", "accuracy", *MEASURED]
"""The columns of :meth:`TelemetrySession.table_rows`."""


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
