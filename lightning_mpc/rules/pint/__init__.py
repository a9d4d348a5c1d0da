"""Parallel-in-time training of residual networks (``strategy="pint"``): predict globally, correct locally.

The pure-PyTorch form is :func:`pint_backward` (and :func:`parallel_in_time` for the steps alone); the rule is
:class:`PinTRule`, its multi-process strategy :class:`PinTStrategy` (``Trainer(strategy="pint", devices=K)``).
"""

from lightning_mpc.rules.pint.backends import DistributedSlabs, SequentialSlabs, SlabBackend, SlabOutput, SlabTime
from lightning_mpc.rules.pint.coarse import COARSE_WEIGHTS, CoarseNetwork
from lightning_mpc.rules.pint.functional import Boundaries, PinTResult, parallel_in_time, pint_backward
from lightning_mpc.rules.pint.modules import ResidualStep, residual_mlp
from lightning_mpc.rules.pint.rule import PinTRule
from lightning_mpc.rules.pint.slabs import ResidualNetwork, slab_ranges, split_network

__all__ = [
    "COARSE_WEIGHTS",
    "Boundaries",
    "CoarseNetwork",
    "DistributedSlabs",
    "PinTResult",
    "PinTRule",
    "ResidualNetwork",
    "ResidualStep",
    "SequentialSlabs",
    "SlabBackend",
    "SlabOutput",
    "SlabTime",
    "parallel_in_time",
    "pint_backward",
    "residual_mlp",
    "slab_ranges",
    "split_network",
]
