"""``Trainer(strategy="pint", devices=K)``: one slab per process on Lightning's DDP launcher and process group.

Parallelism across time, not data: every process trains on every batch (the strategy's distributed sampler has
one replica), runs the fine passes of its own slab, exchanges boundary states and co-states with
``all_gather`` and ends the step with every parameter's full gradient (one ``all_reduce``), so the processes'
identical optimizers keep identical parameters. The module is not wrapped in ``DistributedDataParallel``
(its reducer expects one backward per forward). With one device the slabs run one after the other and no
process group is created.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.fabric.strategies import _StrategyRegistry
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy, Strategy, StrategyRegistry
from torch.nn import Module
from typing_extensions import override

from lightning_mpc.lightning.base import RuleStrategyMixin
from lightning_mpc.lightning.controller import RuleController
from lightning_mpc.lightning.process_group import destroy_process_group_at_exit
from lightning_mpc.rules.pint.coarse import DEFAULT_COARSENING
from lightning_mpc.rules.pint.rule import PinTRule

__all__ = ["PinTStrategy", "register_pint_strategies"]

_START_METHODS = (("", "popen"), ("_spawn", "spawn"), ("_fork", "fork"))


class PinTStrategy(RuleStrategyMixin, DDPStrategy):
    """Parallel-in-time training with one slab per process: ``Trainer(strategy="pint", devices=K)``.

    Args:
        slabs: ``K``; default: the number of processes (2 slabs, run one after the other, on one device).
        iterations: correction sweeps ``k >= 1`` (``2K - 1`` give back-propagation's gradients exactly).
        coarsening: fine steps one coarse Euler step covers at most.
        coarse_weights: ``"mean"`` or ``"first"`` (how coarse parameters derive from the fine ones).
        rule: a configured :class:`~lightning_mpc.rules.pint.PinTRule` instead of the four arguments above.
        telemetry: per-block telemetry, as in :class:`~lightning_mpc.RuleStrategy` (logged from rank 0).
        accelerator: set by the Trainer.
        parallel_devices: set by the Trainer (``devices=K``).
        cluster_environment: set by the Trainer.
        checkpoint_io: checkpoint plugin.
        precision_plugin: set by the Trainer (``precision=...``).
        process_group_backend: ``"gloo"`` (CPU, default there) or ``"nccl"`` (GPU, default there).
        timeout: the process group's timeout.
        start_method: ``"popen"`` (default, scripts), ``"spawn"`` or ``"fork"`` (notebooks, tests).

    Example::

        trainer = L.Trainer(strategy="pint", devices=4)                       # K = 4, one sweep
        trainer = L.Trainer(strategy=PinTStrategy(iterations=2), devices=4)
    """

    strategy_name = "pint"

    def __init__(
        self,
        slabs: int | None = None,
        iterations: int = 1,
        coarsening: int = DEFAULT_COARSENING,
        coarse_weights: str = "mean",
        *,
        rule: PinTRule | None = None,
        telemetry: Any = True,
        accelerator: pl.accelerators.Accelerator | None = None,
        parallel_devices: list[Any] | None = None,
        cluster_environment: Any = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
        process_group_backend: str | None = None,
        timeout: Any = None,
        start_method: str = "popen",
    ) -> None:
        if rule is not None and not isinstance(rule, PinTRule):
            raise TypeError(
                f"PinTStrategy(rule=...) takes a PinTRule, got {type(rule).__name__}. "
                "HINT: use RuleStrategy for other rules."
            )
        built = rule if rule is not None else PinTRule(slabs, iterations, coarsening, coarse_weights)
        self.controller = RuleController(built)
        self.telemetry = telemetry
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            start_method=start_method,
            **extra,
        )

    @property
    def pint(self) -> PinTRule:
        """The parallel-in-time rule (its settings, ``num_slabs`` and the last step's ``last_result``)."""
        rule = self.rule
        assert isinstance(rule, PinTRule)
        return rule

    @property
    @override
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # Every process sees every batch: the slabs split the network, not the data.
        return {"num_replicas": 1, "rank": 0}

    @override
    def setup_distributed(self) -> None:
        if self.num_nodes * self.num_processes > 1:
            super().setup_distributed()
            destroy_process_group_at_exit()
        else:
            self.set_world_ranks()  # one process: the slabs run in turn, no process group is needed

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        if self.world_size > 1:
            super().setup(trainer)  # DDPStrategy's, with configure_ddp below: parameters broadcast, not wrapped
        else:
            Strategy.setup(self, trainer)

    @override
    def _setup_model(self, model: Module) -> Module:
        return model

    @override
    def configure_ddp(self) -> None:
        # Not wrapped: DistributedDataParallel's reducer expects one backward per forward.
        pass

    @override
    def _rule_after_prepare(self, trainer: pl.Trainer) -> None:
        if self.world_size > 1:
            assert self.lightning_module is not None
            _sync_module_states(self.lightning_module)

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        # Registered by register_pint_strategies (after the rule registry installs "pint").
        pass


def register_pint_strategies() -> None:
    """Make ``strategy="pint"`` (and ``"pint_spawn"``, ``"pint_fork"``) a :class:`PinTStrategy`."""
    for suffix, start_method in _START_METHODS:
        StrategyRegistry.register(
            f"pint{suffix}",
            PinTStrategy,
            description=f"Parallel-in-time training, one slab per process, start_method {start_method!r}",
            start_method=start_method,
            override=True,
        )
