"""The partitioner registry and the built-in partitioners (``nn.Sequential``, torchvision, timm).

Importing this package registers every built-in partitioner; see :mod:`.registry` for the contract.
"""

# Imported to register their partitioners, in the order supported_models() lists them.
from lightning_mpc.core.partitioners import sequential  # noqa: F401  isort: skip
from lightning_mpc.core.partitioners import torchvision_residual  # noqa: F401  isort: skip
from lightning_mpc.core.partitioners import torchvision_mobile  # noqa: F401  isort: skip
from lightning_mpc.core.partitioners import torchvision_classic  # noqa: F401  isort: skip
from lightning_mpc.core.partitioners import torchvision_modern  # noqa: F401  isort: skip
from lightning_mpc.core.partitioners import timm_models  # noqa: F401  isort: skip
from lightning_mpc.core.partitioners.registry import (
    REGISTRY,
    NaturalBlocks,
    PartitionerRegistry,
    RegisteredPartitioner,
    partitioner_for,
    register_partitioner,
    supported_models,
)

__all__ = [
    "REGISTRY",
    "NaturalBlocks",
    "PartitionerRegistry",
    "RegisteredPartitioner",
    "partitioner_for",
    "register_partitioner",
    "supported_models",
]
