"""Per-block telemetry in pure PyTorch: what each block costs and how its update relates to the true gradient.

- :class:`StepRecorder` (an engine observer): per-block local loss, forward and backward time,
  activation bytes held for each window, the step's peak, on CUDA the per-window memory peaks.
- :func:`measure_alignment` / :func:`gradient_alignment`: cosine between the horizon rule's update and
  back-propagation's gradient, per block and for the whole network.
- :func:`backprop_memory`: the activation bytes back-propagation would hold on a batch, measured one
  block at a time.
- :func:`partition_rows` / :func:`render_partition`: the partition summary table.

The Lightning side is :class:`lightning_mpc.lightning.telemetry.MPCTelemetry`, a callback that logs all
of this through Lightning's loggers (and W&B extras on top).
"""

from lightning_mpc.telemetry.metrics import BlockwiseRatio, block_hits
from lightning_mpc.telemetry.probes import (
    Alignment,
    BackpropMemory,
    BlockInputCapture,
    RandomState,
    backprop_block_gradients,
    backprop_memory,
    block_grad_norms,
    block_parameters,
    first_block_input,
    gradient_alignment,
    measure_alignment,
)
from lightning_mpc.telemetry.records import StepRecord, StepRecorder
from lightning_mpc.telemetry.summary import PartitionRow, format_bytes, partition_rows, render_partition

__all__ = [
    "Alignment",
    "BackpropMemory",
    "BlockInputCapture",
    "BlockwiseRatio",
    "PartitionRow",
    "RandomState",
    "StepRecord",
    "StepRecorder",
    "backprop_block_gradients",
    "backprop_memory",
    "block_grad_norms",
    "block_hits",
    "block_parameters",
    "first_block_input",
    "format_bytes",
    "gradient_alignment",
    "measure_alignment",
    "partition_rows",
    "render_partition",
]
