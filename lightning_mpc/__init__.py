"""lightning-mpc: horizon-truncated (model-predictive-control) training for PyTorch Lightning.

``import lightning_mpc`` registers ``Trainer(strategy="mpc")``.
"""

from lightning.pytorch.strategies import StrategyRegistry

from lightning_mpc.core import (
    BlockSpan,
    HeadSpec,
    HorizonEngine,
    LocalHead,
    SavedTensorMeter,
    horizon_backward,
    partition,
    profile_blocks,
    target_depths,
)
from lightning_mpc.lightning import MPCMixin, MPCStrategy

__version__ = "0.1.0"

MPCStrategy.register_strategies(StrategyRegistry)

__all__ = [
    "BlockSpan",
    "HeadSpec",
    "HorizonEngine",
    "LocalHead",
    "MPCMixin",
    "MPCStrategy",
    "SavedTensorMeter",
    "__version__",
    "horizon_backward",
    "partition",
    "profile_blocks",
    "target_depths",
]
