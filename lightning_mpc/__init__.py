"""lightning-mpc: training without full back-propagation for PyTorch Lightning.

``import lightning_mpc`` registers every shipped credit-assignment rule as a strategy flag:
``Trainer(strategy="mpc")`` (horizon-truncated, model-predictive-control training) and
``Trainer(strategy="mpc_ddp")``, and likewise every other registered rule.
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
    RuleSetup,
    RuleStep,
    SFFRule,
    available_rules,
    get_rule,
    register_rule,
)

__version__ = "0.2.0.dev0"

_install_strategies()

__all__ = [
    "BlockSpan",
    "CreditRule",
    "FFRule",
    "MPCRule",
    "RuleDDPStrategy",
    "RuleSetup",
    "RuleStep",
    "RuleStrategy",
    "SFFRule",
    "available_rules",
    "get_rule",
    "register_rule",
    "HeadSpec",
    "HorizonEngine",
    "HorizonFinder",
    "HorizonReport",
    "LocalHead",
    "MPCDDPStrategy",
    "MPCMixin",
    "MPCStrategy",
    "MPCTelemetry",
    "RealMemoryMeter",
    "SavedTensorMeter",
    "__version__",
    "horizon_backward",
    "measure_peak",
    "partition",
    "profile_blocks",
    "select_horizon",
    "target_depths",
]
