"""Credit-assignment rules over a network's blocks: one interface, a registry, and the rules shipped.

``import lightning_mpc`` registers every shipped rule and its strategy flags (``Trainer(strategy=name)``
and ``name + "_ddp"`` where the rule allows data parallelism).
"""

from lightning_mpc.rules.base import CreditRule, GradReady, RuleSetup, RuleStep
from lightning_mpc.rules.ff import FFRule
from lightning_mpc.rules.mpc import MPCRule
from lightning_mpc.rules.pepita import PEPITARule
from lightning_mpc.rules.pint import PinTRule
from lightning_mpc.rules.registry import RULES, available_rules, build_rule, get_rule, register_rule
from lightning_mpc.rules.sff import SFFRule
from lightning_mpc.rules.tp import TPRule

register_rule(MPCRule)
register_rule(PEPITARule)
register_rule(PinTRule)
register_rule(TPRule)
register_rule(FFRule)
register_rule(SFFRule)

__all__ = [
    "RULES",
    "CreditRule",
    "FFRule",
    "GradReady",
    "MPCRule",
    "PEPITARule",
    "PinTRule",
    "RuleSetup",
    "RuleStep",
    "SFFRule",
    "TPRule",
    "available_rules",
    "build_rule",
    "get_rule",
    "register_rule",
]
