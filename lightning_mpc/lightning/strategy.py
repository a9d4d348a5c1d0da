"""Single-device strategies: ``RuleStrategy`` runs any credit-assignment rule, ``MPCStrategy`` the MPC rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from typing_extensions import override

from lightning_mpc.core.schedule import Mode
from lightning_mpc.horizon.selection import HorizonReport
from lightning_mpc.lightning.base import RuleStrategyMixin
from lightning_mpc.lightning.compat import StrategyRegistryType
from lightning_mpc.lightning.controller import RuleController
from lightning_mpc.lightning.telemetry import validate_telemetry
from lightning_mpc.rules.base import CreditRule
from lightning_mpc.rules.mpc.rule import MPCRule
from lightning_mpc.rules.registry import build_rule

__all__ = ["MPCStrategy", "MPCStrategyProperties", "RuleStrategy", "partition_options"]


def partition_options(num_blocks: int | None, balance: str | None) -> dict[str, Any]:
    """The strategies' partition arguments, as keyword arguments of :func:`lightning_mpc.partition`."""
    options: dict[str, Any] = {}
    if num_blocks is not None:
        options["num_blocks"] = num_blocks
    if balance is not None:
        options["balance"] = balance
    return options


class RuleStrategy(RuleStrategyMixin, SingleDeviceStrategy):
    """Train with any credit-assignment rule on one device: ``Trainer(strategy="ff")``, ``RuleStrategy(rule=...)``.

    The rule decides every gradient (see :class:`~lightning_mpc.rules.CreditRule`); the user's
    ``training_step``, optimizers, schedulers, accumulation, clipping, precision, loggers, callbacks and
    checkpoints work as usual. Validation, test and predict use the rule's prediction.

    Args:
        rule: a configured rule, or the registered name of one (built with its defaults); from LightingCLI
            YAML, a ``class_path`` with ``init_args``.
        accelerator: the accelerator; usually set through ``Trainer(accelerator=...)``.
        parallel_devices: the device list; set by the Trainer. One device only (``<rule>_ddp`` for several).
        checkpoint_io: checkpoint plugin.
        precision_plugin: precision plugin; usually set through ``Trainer(precision=...)``.
        num_blocks: cut the network into this many blocks (see :func:`lightning_mpc.partition`).
        balance: how to choose the cuts with ``num_blocks`` (``"memory"``: balance real activation bytes).
        telemetry: per-block telemetry to every logger: ``True`` for the defaults, a configured callback,
            or ``False``. A telemetry callback in ``Trainer(callbacks=...)`` takes precedence.

    Example::

        trainer = L.Trainer(strategy="ff")                                  # a registered rule, defaults
        trainer = L.Trainer(strategy=RuleStrategy(rule=FFRule(threshold=2.0)))
    """

    strategy_name = "rule"

    def __init__(
        self,
        rule: CreditRule | str = "mpc",
        accelerator: pl.accelerators.Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
        *,
        num_blocks: int | None = None,
        balance: str | None = None,
        telemetry: Any = True,
    ) -> None:
        self.controller = RuleController(build_rule(rule), partition_options(num_blocks, balance))
        super().__init__(
            device="cpu", accelerator=accelerator, checkpoint_io=checkpoint_io, precision_plugin=precision_plugin
        )
        self.parallel_devices = parallel_devices
        self.telemetry = validate_telemetry(telemetry)

    @property
    @override
    def root_device(self) -> torch.device:
        if self.parallel_devices:
            return self.parallel_devices[0]
        return self._root_device

    @override
    def setup_environment(self) -> None:
        if self.parallel_devices and len(self.parallel_devices) > 1:
            ddp = f"{self.rule.name}_ddp" if self.rule.data_parallel else None
            raise ValueError(
                f"{type(self).__name__} runs on one device, but {len(self.parallel_devices)} were selected "
                f"({', '.join(str(d) for d in self.parallel_devices)}). "
                + (f"HINT: pass devices=1, or use strategy='{ddp}' for several devices." if ddp else "HINT: pass devices=1.")
            )
        super().setup_environment()

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: StrategyRegistryType) -> None:
        # Rule names are registered as rules are (see lightning_mpc.lightning.registration); nothing generic here.
        pass


class MPCStrategyProperties:
    """The MPC rule's settings as strategy properties (shared by :class:`MPCStrategy` and ``MPCDDPStrategy``)."""

    rule: CreditRule

    @property
    def mpc(self) -> MPCRule:
        """The MPC rule (its engine, horizon, mode and ``set_horizon``)."""
        rule = self.rule
        assert isinstance(rule, MPCRule)
        return rule

    @property
    def horizon(self) -> int | str:
        """The horizon ``h`` in use; ``"auto"`` until the selection of ``horizon="auto"`` ran at setup."""
        return self.mpc.horizon

    @property
    def horizon_report(self) -> HorizonReport | None:
        """The measurements, laws and choice of ``horizon="auto"`` (``None`` for a fixed horizon or before setup)."""
        return self.mpc.report

    @property
    def mode(self) -> Mode:
        """The window mode, ``"sliding"`` or ``"block"``."""
        return self.mpc.mode


class MPCStrategy(MPCStrategyProperties, RuleStrategy):
    """Train with the model-predictive-control rule: each block learns from a loss ``horizon`` blocks ahead.

    The network inside the ``LightningModule`` (its only partitionable child, or what
    :meth:`~lightning_mpc.MPCMixin.configure_blocks` returns) is cut into blocks; each block but the last
    gets a small local head. During the user's unmodified ``training_step``, forward hooks interleave the
    window backwards with the forward, so only about ``horizon`` consecutive blocks' activations are held at
    any time; the loss returned by ``training_step`` trains the last window. Optimizers, schedulers, gradient
    accumulation and clipping, mixed precision, loggers, callbacks and checkpoints work as usual. Validation,
    test and predict run the plain model.

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
            (2^30); the best-aligned horizon whose real memory fits.
        min_alignment: with ``horizon="auto"``: a ``cos^2`` in ``(0, 1]``; the least memory reaching it.
        memory_weight: with ``horizon="auto"``: ``lam`` per byte; the minimum of ``lam * M(h) - cos^2(h)``.
        auto_batches: with ``horizon="auto"``: how many of the first training batches to measure on.
        probes: with ``horizon="auto"``: the horizons to measure (default ``1, 2, 4, ...`` and ``T``).
        num_blocks: cut the network into this many blocks (see :func:`lightning_mpc.partition`).
        balance: how to choose the cuts with ``num_blocks`` (``"memory"``: balance real activation bytes).
        telemetry: per-block losses, accuracy, memory, time and alignment logged to every logger
            (:class:`~lightning_mpc.MPCTelemetry`): ``True`` for the defaults, an ``MPCTelemetry`` to configure
            it, ``False`` for none. An ``MPCTelemetry`` in ``Trainer(callbacks=...)`` takes precedence.

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
        auto_batches: int | None = None,
        probes: Sequence[int] | None = None,
        num_blocks: int | None = None,
        balance: str | None = None,
        telemetry: Any = True,
    ) -> None:
        rule = MPCRule(
            horizon,
            mode,
            memory_budget=memory_budget,
            min_alignment=min_alignment,
            memory_weight=memory_weight,
            auto_batches=auto_batches,
            probes=probes,
        )
        super().__init__(
            rule,
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            num_blocks=num_blocks,
            balance=balance,
            telemetry=telemetry,
        )
