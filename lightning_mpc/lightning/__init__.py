"""Lightning integration: the rule strategies, the LightningModule mixin and their shared controller."""

from lightning_mpc.lightning.ddp import MPCDDPStrategy, RuleDDPStrategy
from lightning_mpc.lightning.horizon_finder import HorizonFinder
from lightning_mpc.lightning.mixin import MPCMixin
from lightning_mpc.lightning.predictions import PredictionFile
from lightning_mpc.lightning.strategy import MPCStrategy, RuleStrategy
from lightning_mpc.lightning.telemetry import MPCTelemetry

__all__ = [
    "HorizonFinder",
    "MPCDDPStrategy",
    "MPCMixin",
    "MPCStrategy",
    "MPCTelemetry",
    "PredictionFile",
    "RuleDDPStrategy",
    "RuleStrategy",
]
