"""Data-parallel strategies: ``RuleDDPStrategy`` for any rule that allows it, ``MPCDDPStrategy`` for MPC."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_mpc.core.gradsync import GradientAverager, broadcast_tensors
from lightning_mpc.core.schedule import Mode
from lightning_mpc.lightning.base import RuleStrategyMixin
from lightning_mpc.lightning.compat import StrategyRegistryType, is_accumulating, sync_module_states
from lightning_mpc.lightning.controller import RuleController
from lightning_mpc.lightning.process_group import destroy_process_group_at_exit
from lightning_mpc.lightning.strategy import MPCStrategyProperties, partition_options
from lightning_mpc.lightning.telemetry import validate_telemetry
from lightning_mpc.rules.base import CreditRule
from lightning_mpc.rules.mpc.rule import MPCRule
from lightning_mpc.rules.registry import build_rule

__all__ = ["MPCDDPStrategy", "RuleDDPStrategy"]

_UNSUPPORTED = ("ddp_comm_state", "ddp_comm_hook", "ddp_comm_wrapper", "model_averaging_period")


class RuleDDPStrategy(RuleStrategyMixin, DDPStrategy):
    """A credit-assignment rule on several processes: Lightning's DDP launcher, process group and samplers, no DDP wrapper.

    DistributedDataParallel's reducer expects one backward per forward, while block-wise rules run one
    backward per window or none at all, so the module is not wrapped. Instead the strategy broadcasts rank 0's
    parameters and buffers (the rule's modules included) at setup, keeps BatchNorm buffers in step like DDP
    (``broadcast_buffers``; or use ``Trainer(sync_batchnorm=True)`` on GPUs), and averages gradients itself
    once per optimizer step: micro-batches of a gradient-accumulation window communicate nothing, and on the
    last one gradients start their all-reduce as soon as they are final (``overlap_communication``),
    overlapping with the blocks that follow. When a gradient is final is learned on the first reducing step
    (see :class:`~lightning_mpc.core.gradsync.GradientAverager`), so weights shared by several blocks, or used
    after the last one, are averaged whole.

    Args:
        rule: a configured rule, or the registered name of one (it must allow data parallelism).
        overlap_communication: start all-reduces asynchronously as gradients become final; ``False``
            reduces every gradient after the step's last backward.
        broadcast_buffers: copy rank 0's buffers (BatchNorm statistics) to every process before each
            training step, as ``DistributedDataParallel`` does by default.
        num_blocks: cut the network into this many blocks (see :func:`lightning_mpc.partition`).
        balance: ``"memory"``: cuts chosen by real memory at ``h = 1``, as in :class:`~lightning_mpc.MPCStrategy`
            (every process measures the same shapes, so the cuts agree).
        telemetry: per-block telemetry, as in :class:`~lightning_mpc.lightning.strategy.RuleStrategy` (logged
            from rank 0).
        **kwargs: passed to :class:`~lightning.pytorch.strategies.DDPStrategy` (``accelerator``,
            ``parallel_devices``, ``cluster_environment``, ``process_group_backend``, ``timeout``,
            ``start_method``, ...). DDP communication hooks and model averaging act on the DDP wrapper,
            which this strategy does not use, and are refused.
    """

    strategy_name = "rule_ddp"

    def __init__(
        self,
        rule: CreditRule | str = "mpc",
        overlap_communication: bool = True,
        broadcast_buffers: bool = True,
        *,
        num_blocks: int | None = None,
        balance: str | None = None,
        telemetry: Any = True,
        **kwargs: Any,
    ) -> None:
        refused = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
        if refused:
            raise ValueError(
                f"{type(self).__name__} does not support {', '.join(refused)}: they act on the "
                "DistributedDataParallel wrapper, which block-wise training cannot use. HINT: remove these arguments."
            )
        wrapper_kwargs = sorted(set(kwargs) - set(_DDP_STRATEGY_ARGS))
        if wrapper_kwargs:
            rank_zero_warn(
                f"{type(self).__name__} ignores DistributedDataParallel arguments {wrapper_kwargs}: the module is not "
                "wrapped."
            )
            for name in wrapper_kwargs:
                kwargs.pop(name)
        built = build_rule(rule)
        if not built.data_parallel:
            raise ValueError(
                f"The {built.name!r} rule does not allow data parallelism. HINT: use strategy='{built.name}' "
                "(one device), or a rule that does."
            )
        self.controller = RuleController(built, partition_options(num_blocks, balance))
        self.telemetry = validate_telemetry(telemetry)
        super().__init__(**kwargs)
        self.overlap_communication = overlap_communication
        self.broadcast_buffers = broadcast_buffers
        self._averager = GradientAverager(asynchronous=overlap_communication)
        self._trained_to_the_end = False
        self._reduce_this_step = False

    @property
    def bytes_communicated(self) -> int:
        """Bytes of gradients this process has all-reduced so far."""
        return self._averager.bytes_communicated

    @override
    def setup_distributed(self) -> None:
        super().setup_distributed()
        destroy_process_group_at_exit()

    @override
    def configure_ddp(self) -> None:
        # Not wrapped: see the class docstring. Parameters are broadcast once the rule's modules exist.
        pass

    @override
    def _rule_after_prepare(self, trainer: pl.Trainer) -> None:
        module = self.lightning_module
        assert module is not None
        sync_module_states(module)
        self._averager.attach((name, p) for name, p in module.named_parameters() if p.requires_grad)

    @override
    def _rule_step_begin(self, trainer: pl.Trainer) -> None:
        module = self.lightning_module
        assert module is not None
        if self.broadcast_buffers:
            broadcast_tensors(module.buffers())
        self._reduce_this_step = not is_accumulating(trainer)
        if self._reduce_this_step:
            trainable = tuple(id(p) for p in module.parameters() if p.requires_grad)
            self._averager.start_step(key=(repr(self.rule.describe()), trainable))
            self.rule.on_grad_ready = self._averager.ready if self.overlap_communication else None
        else:
            self.rule.on_grad_ready = None

    @override
    def _rule_after_backward(self) -> None:
        if self._reduce_this_step:
            assert self.lightning_module is not None
            self._averager.finish(p for p in self.lightning_module.parameters() if p.requires_grad)
            self._reduce_this_step = False

    @override
    def teardown(self) -> None:
        self._averager.cancel()
        self._averager.detach()
        if self._trained_to_the_end and torch.distributed.is_available() and torch.distributed.is_initialized():
            # After a normal end of fit only (after an exception a barrier could wait forever): no process leaves,
            # and destroys its process group at exit (destroy_process_group_at_exit), while another is still in a
            # collective.
            self.barrier("lightning_mpc.teardown")
        self._trained_to_the_end = False
        super().teardown()

    @override
    def on_train_end(self) -> None:
        self._trained_to_the_end = True
        super().on_train_end()

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: StrategyRegistryType) -> None:
        # Rule names are registered as rules are (see lightning_mpc.lightning.registration).
        pass


class MPCDDPStrategy(MPCStrategyProperties, RuleDDPStrategy):
    """The MPC rule on several processes and nodes: ``Trainer(strategy="mpc_ddp", devices=N)``.

    See :class:`RuleDDPStrategy` for how gradients are averaged without DistributedDataParallel.

    Args:
        horizon: ``h >= 1``; a value at least the number of blocks is exact back-propagation.
        mode: ``"sliding"`` or ``"block"``.
        overlap_communication: start each gradient's all-reduce asynchronously when it is final; ``False``
            reduces every gradient after the step's last backward.
        broadcast_buffers: copy rank 0's buffers (BatchNorm statistics) to every process before each
            training step, as ``DistributedDataParallel`` does by default.
        memory_budget: with ``horizon="auto"``, as in :class:`~lightning_mpc.MPCStrategy`. Every process
            trains with rank 0's choice.
        min_alignment: with ``horizon="auto"``, as in :class:`~lightning_mpc.MPCStrategy`.
        memory_weight: with ``horizon="auto"``, as in :class:`~lightning_mpc.MPCStrategy`.
        auto_batches: with ``horizon="auto"``, as in :class:`~lightning_mpc.MPCStrategy`.
        probes: with ``horizon="auto"``, as in :class:`~lightning_mpc.MPCStrategy`.
        num_blocks: cut the network into this many blocks (see :func:`lightning_mpc.partition`).
        balance: ``"memory"``: cuts chosen by real memory at ``h = 1``, as in :class:`~lightning_mpc.MPCStrategy`
            (every process measures the same shapes, so the cuts agree).
        telemetry: per-block metrics, as in :class:`~lightning_mpc.MPCStrategy` (logged from rank 0).
        **kwargs: passed to :class:`~lightning.pytorch.strategies.DDPStrategy` (see :class:`RuleDDPStrategy`).

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
        auto_batches: int | None = None,
        probes: Sequence[int] | None = None,
        num_blocks: int | None = None,
        balance: str | None = None,
        telemetry: Any = True,
        **kwargs: Any,
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
            overlap_communication,
            broadcast_buffers,
            num_blocks=num_blocks,
            balance=balance,
            telemetry=telemetry,
            **kwargs,
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
