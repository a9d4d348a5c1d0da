"""Pure-PyTorch core: partition, heads, the interleaved engine and memory accounting."""

from lightning_mpc.core.engine import HorizonEngine, horizon_backward
from lightning_mpc.core.heads import (
    HeadSpec,
    LocalHead,
    build_heads,
    default_local_loss,
    head_specs_for,
    infer_head_spec,
    infer_heads,
)
from lightning_mpc.core.hooks import BlockHooks
from lightning_mpc.core.memory import BlockProfile, SavedTensorMeter, preserved_buffers, profile_blocks
from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.core.partition import BlockSpan, partition, register_partitioner, supported_models
from lightning_mpc.core.realmem import MemoryPeak, RealMemoryMeter, measure_peak
from lightning_mpc.core.schedule import MODES, Mode, target_depths

__all__ = [
    "MODES",
    "BlockHooks",
    "BlockProfile",
    "BlockSpan",
    "EngineObserver",
    "HeadSpec",
    "HorizonEngine",
    "LocalHead",
    "MemoryPeak",
    "Mode",
    "RealMemoryMeter",
    "SavedTensorMeter",
    "build_heads",
    "default_local_loss",
    "head_specs_for",
    "horizon_backward",
    "infer_head_spec",
    "infer_heads",
    "measure_peak",
    "partition",
    "preserved_buffers",
    "profile_blocks",
    "register_partitioner",
    "supported_models",
    "target_depths",
]
