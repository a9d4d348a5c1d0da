"""``MPCStrategy``: horizon-truncated training on one device, as a Lightning strategy."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.strategies import _StrategyRegistry
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from typing_extensions import override

from lightning_mpc.core.partition import Balance
from lightning_mpc.core.schedule import Mode
from lightning_mpc.lightning.auto_horizon import DEFAULT_AUTO_BATCHES
from lightning_mpc.lightning.base import MPCStrategyMixin
from lightning_mpc.lightning.controller import MPCController
from lightning_mpc.lightning.telemetry import MPCTelemetry

__all__ = ["MPCStrategy"]


class MPCStrategy(MPCStrategyMixin, SingleDeviceStrategy):
    """Train with the model-predictive-control rule: each block learns from a loss ``horizon`` blocks ahead.

    The network inside the ``LightningModule`` (its only child that :func:`lightning_mpc.partition` can cut,
    see :func:`lightning_mpc.supported_models`, or what :meth:`~lightning_mpc.MPCMixin.configure_blocks` returns) is cut into blocks; each
    block but the last gets a small local head. During the user's unmodified ``training_step``, forward
    hooks interleave the window backwards with the forward, so only about ``horizon`` consecutive
    blocks' activations are held at any time; the loss returned by ``training_step`` trains the last
    window. Optimizers, schedulers, gradient accumulation and clipping, mixed precision, loggers,
    callbacks and checkpoints work as usual. Validation, test and predict run the plain model.

    Args:
        horizon: ``h >= 1``. ``1`` is local learning; a value at least the number of blocks is exact
            back-propagation. ``"auto"`` selects it before training, on the first ``auto_batches``
            training batches, for the one objective given below (Ren & Li's method, see
            :func:`lightning_mpc.select_horizon`); the report is ``strategy.horizon_report``.
        mode: ``"sliding"`` (block ``k`` learns from depth ``min(k + h, T)``, the paper's rule) or
            ``"block"`` (non-overlapping windows of ``h`` blocks learn from the loss at their end).
        accelerator: the accelerator; usually set through ``Trainer(accelerator=...)``.
        parallel_devices: the device list; set by the Trainer from ``accelerator``/``devices``.
            Only one device is supported; use ``strategy="mpc_ddp"`` for several.
        checkpoint_io: checkpoint plugin.
        precision_plugin: precision plugin; usually set through ``Trainer(precision=...)``.
        memory_budget: with ``horizon="auto"``: bytes or a string such as ``"2GB"`` (10^9) or ``"2GiB"``
            (2^30); the best-aligned horizon whose activation memory (saved for backward) fits.
        min_alignment: with ``horizon="auto"``: a ``cos^2`` in ``(0, 1]``; the least memory reaching it.
        memory_weight: with ``horizon="auto"``: ``lam`` per byte; the minimum of ``lam * M(h) - cos^2(h)``.
        auto_batches: with ``horizon="auto"``: how many of the first training batches to measure on.
        probes: with ``horizon="auto"``: the horizons to measure (default ``1, 2, 4, ...`` and ``T``).
        telemetry: per-block losses, accuracy, memory, time and alignment logged to every logger
            (:class:`~lightning_mpc.MPCTelemetry`): ``True`` for the defaults, an ``MPCTelemetry`` to configure
            it, ``False`` for none. An ``MPCTelemetry`` in ``Trainer(callbacks=...)`` takes precedence.
        num_blocks: cut the network into this many blocks instead of its natural ones (see
            :func:`lightning_mpc.partition`); ignored when ``configure_blocks()`` returns a list.
        balance: ``"memory"`` chooses the cuts so that the largest block's real memory at ``h = 1`` is as
            small as possible, measured on the first batch (``num_blocks`` blocks, default as many as the
            natural cut).

    Example::

        import lightning as L
        import lightning_mpc  # registers strategy="mpc"
        trainer = L.Trainer(strategy=lightning_mpc.MPCStrategy(horizon=2))
        trainer = L.Trainer(strategy=lightning_mpc.MPCStrategy(horizon="auto", memory_budget="2GB"))
    """

    strategy_name = "mpc"

    def __init__(
        self,
        horizon: int | str = 1,
        mode: Mode = "sliding",
        accelerator: pl.accelerators.Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
        *,
        memory_budget: float | str | None = None,
        min_alignment: float | None = None,
        memory_weight: float | None = None,
        auto_batches: int = DEFAULT_AUTO_BATCHES,
        probes: Sequence[int] | None = None,
        telemetry: bool | MPCTelemetry = True,
        num_blocks: int | None = None,
        balance: Balance | None = None,
    ) -> None:
        self.mpc = MPCController(
            horizon,
            mode,
            memory_budget=memory_budget,
            min_alignment=min_alignment,
            memory_weight=memory_weight,
            auto_batches=auto_batches,
            probes=probes,
            num_blocks=num_blocks,
            balance=balance,
        )
        super().__init__(
            device="cpu", accelerator=accelerator, checkpoint_io=checkpoint_io, precision_plugin=precision_plugin
        )
        self.parallel_devices = parallel_devices
        self.telemetry = telemetry

    @property
    @override
    def root_device(self) -> torch.device:
        if self.parallel_devices:
            return self.parallel_devices[0]
        return self._root_device

    @override
    def setup_environment(self) -> None:
        if self.parallel_devices and len(self.parallel_devices) > 1:
            raise ValueError(
                f"MPCStrategy runs on one device, but {len(self.parallel_devices)} were selected "
                f"({', '.join(str(d) for d in self.parallel_devices)}). "
                "HINT: pass devices=1, or use strategy='mpc_ddp' for several devices."
            )
        super().setup_environment()

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        strategy_registry.register(
            cls.strategy_name, cls, description="Horizon-truncated (MPC) training on one device", override=True
        )
