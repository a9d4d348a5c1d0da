"""Lightning integration: the strategy, the LightningModule mixin and their shared controller."""

from lightning_mpc.lightning.mixin import MPCMixin
from lightning_mpc.lightning.strategy import MPCStrategy

__all__ = ["MPCMixin", "MPCStrategy"]
