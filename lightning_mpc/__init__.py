"""lightning-mpc: horizon-truncated (model-predictive-control) training for PyTorch Lightning.

``import lightning_mpc`` registers ``Trainer(strategy="mpc")`` and ``Trainer(strategy="mpc_ddp")``.
"""

from lightning.pytorch.strategies import StrategyRegistry

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
from lightning_mpc.lightning import HorizonFinder, MPCDDPStrategy, MPCMixin, MPCStrategy, MPCTelemetry

__version__ = "0.1.0"

MPCStrategy.register_strategies(StrategyRegistry)
MPCDDPStrategy.register_strategies(StrategyRegistry)

__all__ = [
    "BlockSpan",
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
    "register_partitioner",
    "select_horizon",
    "supported_models",
    "target_depths",
]
