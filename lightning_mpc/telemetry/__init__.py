"""Per-block telemetry in pure PyTorch, without a Trainer: what each block costs and how its update relates
to the true gradient, for any credit-assignment rule.

- :class:`StepRecorder` (a rule observer): per-block local loss, forward and backward time, real memory while
  each block ran, the step's real peak, the rule's own signals (and, as a breakdown, bytes saved for backward).
- :class:`MeasurementPlan`: what to measure at which step.
- :class:`TelemetrySession`: step records in, metric dictionaries out; epoch accumulation; W&B tables.
- :func:`measure_alignment` / :func:`gradient_alignment`: cosine between a rule's update and back-propagation's
  gradient, per block and for the whole network; :func:`backprop_peak_bytes`: what back-propagation would
  really hold, measured one block at a time.
- :func:`partition_rows` / :func:`render_partition`: the partition summary table.

The Lightning side is :class:`lightning_mpc.lightning.telemetry.MPCTelemetry`, a thin callback over these.
"""

from lightning_mpc.telemetry.metrics import BlockwiseRatio, block_hits
from lightning_mpc.telemetry.plan import MeasurementPlan, StepPlan
from lightning_mpc.telemetry.probes import (
    Alignment,
    BlockInputCapture,
    RandomState,
    backprop_block_gradients,
    backprop_peak_bytes,
    block_grad_norms,
    block_parameters,
    first_block_input,
    gradient_alignment,
    measure_alignment,
    step_update,
)
from lightning_mpc.telemetry.records import StepRecord, StepRecorder
from lightning_mpc.telemetry.session import TelemetrySession, block_key, network_key
from lightning_mpc.telemetry.summary import PartitionRow, partition_rows, render_partition

__all__ = [
    "Alignment",
    "BlockInputCapture",
    "BlockwiseRatio",
    "MeasurementPlan",
    "PartitionRow",
    "RandomState",
    "StepPlan",
    "StepRecord",
    "StepRecorder",
    "TelemetrySession",
    "backprop_block_gradients",
    "backprop_peak_bytes",
    "block_grad_norms",
    "block_hits",
    "block_key",
    "block_parameters",
    "first_block_input",
    "gradient_alignment",
    "measure_alignment",
    "network_key",
    "partition_rows",
    "render_partition",
    "step_update",
]
