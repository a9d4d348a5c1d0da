"""``MPCDDPStrategy``: horizon-truncated training on many devices and nodes with Lightning's DDP machinery."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.strategies import _StrategyRegistry
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_mpc.core.gradsync import GradientAverager, broadcast_tensors
from lightning_mpc.core.partition import Balance
from lightning_mpc.core.schedule import Mode
from lightning_mpc.lightning.auto_horizon import DEFAULT_AUTO_BATCHES
from lightning_mpc.lightning.base import MPCStrategyMixin
from lightning_mpc.lightning.controller import MPCController
from lightning_mpc.lightning.telemetry import MPCTelemetry

__all__ = ["MPCDDPStrategy"]

_UNSUPPORTED = ("ddp_comm_state", "ddp_comm_hook", "ddp_comm_wrapper", "model_averaging_period")


class MPCDDPStrategy(MPCStrategyMixin, DDPStrategy):
    """The horizon rule on several processes: Lightning's DDP launcher, process group and samplers, no DDP wrapper.

    DistributedDataParallel's reducer expects one backward per forward, while horizon training runs
    one backward per window, so the module is not wrapped. Instead the strategy broadcasts rank 0's
    parameters and buffers (local heads included) at setup, keeps BatchNorm buffers in step like DDP
    (``broadcast_buffers``; or use ``Trainer(sync_batchnorm=True)`` on GPUs), and averages gradients
    itself once per optimizer step: micro-batches of a gradient-accumulation window communicate
    nothing, and on the last one each block's and head's gradients start their all-reduce as soon as
    their window closes (``overlap_communication``), overlapping with the blocks that follow.

    Args:
        horizon: ``h >= 1``; a value at least the number of blocks is exact back-propagation.
        mode: ``"sliding"`` or ``"block"``.
        overlap_communication: start each window's all-reduce asynchronously when it closes; ``False``
            reduces every gradient after the step's last backward.
        broadcast_buffers: copy rank 0's buffers (BatchNorm statistics) to every process before each
            training step, as ``DistributedDataParallel`` does by default.
        memory_budget: with ``horizon="auto"``, as in :class:`~lightning_mpc.MPCStrategy`. Every process
            trains with rank 0's choice.
        min_alignment: with ``horizon="auto"``, as in :class:`~lightning_mpc.MPCStrategy`.
        memory_weight: with ``horizon="auto"``, as in :class:`~lightning_mpc.MPCStrategy`.
        auto_batches: with ``horizon="auto"``, as in :class:`~lightning_mpc.MPCStrategy`.
        probes: with ``horizon="auto"``, as in :class:`~lightning_mpc.MPCStrategy`.
        telemetry: per-block metrics, as in :class:`~lightning_mpc.MPCStrategy` (logged from rank 0).
        num_blocks: as in :class:`~lightning_mpc.MPCStrategy`.
        balance: as in :class:`~lightning_mpc.MPCStrategy`; every process measures the same shapes, so the
            cuts agree.
        **kwargs: passed to :class:`~lightning.pytorch.strategies.DDPStrategy` (``accelerator``,
            ``parallel_devices``, ``cluster_environment``, ``process_group_backend``, ``timeout``,
            ``start_method``, ...). DDP communication hooks and model averaging act on the DDP wrapper,
            which this strategy does not use, and are refused.

    Example::

        trainer = L.Trainer(strategy="mpc_ddp", accelerator="gpu", devices=8, num_nodes=2)
        trainer = L.Trainer(strategy=MPCDDPStrategy(horizon=2), devices=4)
    """

    strategy_name = "mpc_ddp"

    def __init__(
        self,
        horizon: int | str = 1,
        mode: Mode = "sliding",
        overlap_communication: bool = True,
        broadcast_buffers: bool = True,
        *,
        memory_budget: float | str | None = None,
        min_alignment: float | None = None,
        memory_weight: float | None = None,
        auto_batches: int = DEFAULT_AUTO_BATCHES,
        probes: Sequence[int] | None = None,
        telemetry: bool | MPCTelemetry = True,
        num_blocks: int | None = None,
        balance: Balance | None = None,
        **kwargs: Any,
    ) -> None:
        refused = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
        if refused:
            raise ValueError(
                f"MPCDDPStrategy does not support {', '.join(refused)}: they act on the DistributedDataParallel "
                "wrapper, which horizon training cannot use. HINT: remove these arguments."
            )
        wrapper_kwargs = sorted(set(kwargs) - set(_DDP_STRATEGY_ARGS))
        if wrapper_kwargs:
            rank_zero_warn(
                f"MPCDDPStrategy ignores DistributedDataParallel arguments {wrapper_kwargs}: the module is not wrapped."
            )
            for name in wrapper_kwargs:
                kwargs.pop(name)
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
        self.telemetry = telemetry
        super().__init__(**kwargs)
        self.overlap_communication = overlap_communication
        self.broadcast_buffers = broadcast_buffers
        self._averager = GradientAverager(asynchronous=overlap_communication)
        self._reduce_this_step = False

    @property
    def bytes_communicated(self) -> int:
        """Bytes of gradients this process has all-reduced so far."""
        return self._averager.bytes_communicated

    @override
    def configure_ddp(self) -> None:
        # Not wrapped: see the class docstring. Parameters are broadcast once the heads exist.
        pass

    @override
    def _mpc_after_prepare(self, trainer: pl.Trainer) -> None:
        assert self.lightning_module is not None
        _sync_module_states(self.lightning_module)

    @override
    def _mpc_step_begin(self, trainer: pl.Trainer) -> None:
        module = self.lightning_module
        assert module is not None and self.mpc.engine is not None
        if self.broadcast_buffers:
            broadcast_tensors(module.buffers())
        self._reduce_this_step = not trainer.fit_loop._should_accumulate()
        if self._reduce_this_step and self.overlap_communication:
            self.mpc.engine.on_grad_ready = lambda ready: self._averager.launch(ready.parameters())
        else:
            self.mpc.engine.on_grad_ready = None

    @override
    def _mpc_after_backward(self) -> None:
        if self._reduce_this_step:
            assert self.lightning_module is not None
            self._averager.finish(p for p in self.lightning_module.parameters() if p.requires_grad)
            self._reduce_this_step = False

    @override
    def teardown(self) -> None:
        self._averager.cancel()
        super().teardown()

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        for name, start_method in (("mpc_ddp", "popen"), ("mpc_ddp_spawn", "spawn"), ("mpc_ddp_fork", "fork")):
            strategy_registry.register(
                name,
                cls,
                description=f"Horizon-truncated (MPC) training with DDP, start_method '{start_method}'",
                start_method=start_method,
                override=True,
            )


_DDP_STRATEGY_ARGS = (
    "accelerator",
    "parallel_devices",
    "cluster_environment",
    "checkpoint_io",
    "precision_plugin",
    "process_group_backend",
    "timeout",
    "start_method",
    *_UNSUPPORTED,
)
