"""Strategy flags for every registered credit-assignment rule.

When a rule is registered (:func:`lightning_mpc.register_rule`), ``Trainer(strategy=name)`` becomes a
:class:`~lightning_mpc.lightning.strategy.RuleStrategy` running it and, when the rule allows data
parallelism, ``Trainer(strategy=f"{name}_ddp")`` (with ``_spawn`` and ``_fork`` variants) a
:class:`~lightning_mpc.lightning.ddp.RuleDDPStrategy`. MPC keeps its own classes (``MPCStrategy``,
``MPCDDPStrategy``) with the horizon arguments. A rule that needs a strategy of its own registers it with
Lightning's ``StrategyRegistry`` after this (``override=True``).
"""

from __future__ import annotations

from lightning.pytorch.strategies import StrategyRegistry

from lightning_mpc.lightning.ddp import MPCDDPStrategy, RuleDDPStrategy
from lightning_mpc.lightning.strategy import MPCStrategy, RuleStrategy
from lightning_mpc.rules.base import CreditRule
from lightning_mpc.rules.mpc.rule import MPCRule
from lightning_mpc.rules.registry import RULES

__all__ = ["register_rule_strategies"]

_START_METHODS = (("", "popen"), ("_spawn", "spawn"), ("_fork", "fork"))


def register_rule_strategies(rule: type[CreditRule]) -> None:
    """Register the strategy flags of ``rule`` with Lightning (replacing earlier registrations of the same names)."""
    name = rule.name
    if rule is MPCRule:
        StrategyRegistry.register(
            name, MPCStrategy, description="Horizon-truncated (MPC) training on one device", override=True
        )
    else:
        StrategyRegistry.register(
            name, RuleStrategy, description=f"The {name!r} credit-assignment rule on one device", rule=name, override=True
        )
    if not rule.data_parallel:
        return
    for suffix, start_method in _START_METHODS:
        kwargs = {} if rule is MPCRule else {"rule": name}
        StrategyRegistry.register(
            f"{name}_ddp{suffix}",
            MPCDDPStrategy if rule is MPCRule else RuleDDPStrategy,
            description=f"The {name!r} rule with DDP, start_method {start_method!r}",
            start_method=start_method,
            override=True,
            **kwargs,
        )


def install() -> None:
    """Register strategy flags for every rule registered so far and every rule registered later."""
    RULES.on_register(register_rule_strategies)
