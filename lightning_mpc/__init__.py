"""lightning-mpc: training without full back-propagation for PyTorch Lightning.

``import lightning_mpc`` registers every shipped credit-assignment rule as a strategy flag:
``Trainer(strategy="mpc")`` (horizon-truncated, model-predictive-control training) and
``Trainer(strategy="mpc_ddp")``, target propagation over the time steps of an RNN (``Trainer(strategy="tp")``),
and likewise every other registered rule.
"""

from lightning_mpc.core import (
    BlockSpan,
    HeadSpec,
    HorizonEngine,
    LocalHead,
    RealMemoryMeter,
    SavedTensorMeter,
    horizon_backward,
    measure_peak,
    partition,
    profile_blocks,
    register_partitioner,
    supported_models,
    target_depths,
)
from lightning_mpc.horizon import HorizonReport, select_horizon
from lightning_mpc.lightning import (
    HorizonFinder,
    MPCDDPStrategy,
    MPCMixin,
    MPCStrategy,
    MPCTelemetry,
    RuleDDPStrategy,
    RuleStrategy,
)
from lightning_mpc.lightning.registration import install as _install_strategies
from lightning_mpc.rules import (
    CreditRule,
    FFRule,
    MPCRule,
    PEPITARule,
    RuleSetup,
    RuleStep,
    SFFRule,
    TPRule,
    available_rules,
    get_rule,
    register_rule,
)
from lightning_mpc.rules.pint import PinTRule, ResidualStep, pint_backward, residual_mlp
from lightning_mpc.rules.pint.strategy import PinTStrategy
from lightning_mpc.rules.pint.strategy import register_pint_strategies as _register_pint_strategies

__version__ = "0.2.0.dev0"

_install_strategies()
_register_pint_strategies()  # after the generic "pint" flag the rule registry installed

__all__ = [
    "BlockSpan",
    "CreditRule",
    "FFRule",
    "HeadSpec",
    "HorizonEngine",
    "HorizonFinder",
    "HorizonReport",
    "LocalHead",
    "MPCDDPStrategy",
    "MPCMixin",
    "MPCRule",
    "MPCStrategy",
    "MPCTelemetry",
    "PEPITARule",
    "PinTRule",
    "PinTStrategy",
    "RealMemoryMeter",
    "ResidualStep",
    "RuleDDPStrategy",
    "RuleSetup",
    "RuleStep",
    "RuleStrategy",
    "SFFRule",
    "SavedTensorMeter",
    "TPRule",
    "__version__",
    "available_rules",
    "get_rule",
    "horizon_backward",
    "measure_peak",
    "partition",
    "pint_backward",
    "profile_blocks",
    "register_partitioner",
    "register_rule",
    "residual_mlp",
    "select_horizon",
    "supported_models",
    "target_depths",
]
