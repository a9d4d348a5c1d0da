"""The benchmark harness that the demo, ``benchmarks/*`` and the frontier share.

One job per module:

- :mod:`~lightning_mpc.bench.workloads`: networks cut into blocks, their local heads and a batch;
- :mod:`~lightning_mpc.bench.steps`: one step of back-propagation, activation checkpointing, MPC or any rule;
- :mod:`~lightning_mpc.bench.memory`: the real peak of a step (gradients allocated beforehand, zeroed in
  place), the window model's prediction, the saved-tensor breakdown and the bytes-per-block fit;
- :mod:`~lightning_mpc.bench.timing`: interleaved round-robin timing with its spread and the noise flag;
- :mod:`~lightning_mpc.bench.callbacks`: the same measurements of a Lightning training step;
- :mod:`~lightning_mpc.bench.methods`: the rows of a Lightning comparison (BP, checkpointing, MPC, any rule);
- :mod:`~lightning_mpc.bench.training`: training and timing those rows side by side on the bundled digits;
- :mod:`~lightning_mpc.bench.results`: the results table and accuracy check of the demo and the frontier;
- :mod:`~lightning_mpc.bench.table`, :mod:`~lightning_mpc.bench.machine`, :mod:`~lightning_mpc.bench.quiet`:
  the table printer, the machine line and a quiet Lightning console.
"""

from lightning_mpc.bench.callbacks import StepMemory, StepTimer
from lightning_mpc.bench.machine import load_average, machine_line
from lightning_mpc.bench.memory import (
    LinearFit,
    WindowModel,
    fit_bytes_per_block,
    prepare_gradients,
    saved_tensor_peak,
    step_peak,
    window_model,
)
from lightning_mpc.bench.methods import (
    CheckpointedSequential,
    Method,
    backprop_method,
    checkpoint_method,
    mpc_method,
    rule_method,
    with_checkpointing,
)
from lightning_mpc.bench.quiet import quiet_lightning
from lightning_mpc.bench.results import ACCURACY_TOLERANCE, accuracy_verdicts, results_table
from lightning_mpc.bench.steps import (
    StepConfig,
    backprop_step,
    checkpoint_step,
    checkpointed_forward,
    module_step,
    mpc_step,
    rule_step,
    sqrt_segment,
    standard_configs,
)
from lightning_mpc.bench.table import MIB, Table, mib
from lightning_mpc.bench.timing import NOISE_LIMIT, Spread, Timings, interleaved_rounds, spread, time_call
from lightning_mpc.bench.training import MethodResult, TrainingSetup, bench_trainer, time_methods, train_and_measure
from lightning_mpc.bench.workloads import WORKLOAD_NAMES, Workload, local_heads, make_workload

__all__ = [
    "ACCURACY_TOLERANCE",
    "MIB",
    "NOISE_LIMIT",
    "WORKLOAD_NAMES",
    "CheckpointedSequential",
    "LinearFit",
    "Method",
    "MethodResult",
    "Spread",
    "StepConfig",
    "StepMemory",
    "StepTimer",
    "Table",
    "Timings",
    "TrainingSetup",
    "WindowModel",
    "Workload",
    "accuracy_verdicts",
    "backprop_method",
    "backprop_step",
    "bench_trainer",
    "checkpoint_method",
    "checkpoint_step",
    "checkpointed_forward",
    "fit_bytes_per_block",
    "interleaved_rounds",
    "load_average",
    "local_heads",
    "machine_line",
    "make_workload",
    "mib",
    "module_step",
    "mpc_method",
    "mpc_step",
    "prepare_gradients",
    "quiet_lightning",
    "results_table",
    "rule_method",
    "rule_step",
    "saved_tensor_peak",
    "spread",
    "sqrt_segment",
    "standard_configs",
    "step_peak",
    "time_call",
    "time_methods",
    "train_and_measure",
    "window_model",
    "with_checkpointing",
]
