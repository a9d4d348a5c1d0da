"""Real memory of one benchmark step (allocator bytes), its window-model prediction and its breakdowns.

Every step is measured with its gradients allocated beforehand and zeroed in place
(:func:`prepare_gradients`), the steady state of training with ``zero_grad(set_to_none=False)``: no step
pays for allocating ``.grad``, so the figures compare what the methods themselves hold (activations,
graphs, block outputs, heads, backward temporaries). The real peak comes from
:class:`~lightning_mpc.core.realmem.RealMemoryMeter` (CPU: the profiler's allocator events; CUDA:
``max_memory_allocated``); the bytes saved for backward (:class:`~lightning_mpc.core.memory.SavedTensorMeter`)
are reported only as a breakdown of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lightning_mpc.bench.steps import Step, StepConfig
from lightning_mpc.bench.workloads import Workload
from lightning_mpc.core.memory import RealMemoryProfile, SavedTensorMeter, profile_real_memory
from lightning_mpc.core.realmem import MemoryPeak, RealMemoryMeter

__all__ = [
    "LinearFit",
    "WindowModel",
    "fit_bytes_per_block",
    "prepare_gradients",
    "saved_tensor_peak",
    "step_peak",
    "window_model",
]


def prepare_gradients(params: Sequence[nn.Parameter]) -> None:
    """Give every parameter a ``.grad`` (zeros where it had none) and zero existing ones in place."""
    with torch.no_grad():
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            else:
                param.grad.zero_()


def step_peak(step: Step, params: Sequence[nn.Parameter], device: torch.device | str) -> MemoryPeak:
    """The real peak of one step above what was allocated before it, gradients prepared beforehand."""
    prepare_gradients(params)
    meter = RealMemoryMeter(device)
    with meter:
        step()
    assert meter.result is not None
    return meter.result


def saved_tensor_peak(step: Step, params: Sequence[nn.Parameter]) -> int:
    """A breakdown: the peak of bytes saved for backward during one step (parameters excluded).

    Activation checkpointing saves behind saved-tensor hooks of its own, which this meter cannot see:
    do not read the figure for checkpointed steps.
    """
    prepare_gradients(params)
    meter = SavedTensorMeter(exclude=params)
    with meter:
        step()
    return meter.peak_bytes


@dataclass(frozen=True)
class WindowModel:
    """The window model's predictions for a workload (:class:`~lightning_mpc.core.memory.RealMemoryProfile`).

    Attributes:
        local: the profile with every local head's loss (for MPC).
        backprop: the profile without local losses (for back-propagation, ``h = T``).
    """

    local: RealMemoryProfile
    backprop: RealMemoryProfile

    def predict(self, config: StepConfig) -> int | None:
        """The predicted real peak of a step; ``None`` for checkpointing (the model does not cover it)."""
        if config.kind == "bp":
            return self.backprop.predict_peak(self.backprop.num_blocks)
        if config.kind == "mpc" and config.horizon is not None:
            return self.local.predict_peak(config.horizon, config.mode or "sliding")
        return None


def window_model(w: Workload) -> WindowModel:
    """Profile a workload one block at a time (about one block's memory); buffers and gradients are kept."""
    device = w.x.device
    local = profile_real_memory(w.blocks, list(w.heads), w.x, w.y, w.loss_fn, device)
    backprop = profile_real_memory(w.blocks, [], w.x, w.y, w.loss_fn, device, local_losses=False)
    return WindowModel(local, backprop)


@dataclass(frozen=True)
class LinearFit:
    """``peak = slope * T + intercept``, fitted by least squares over several depths ``T``.

    Attributes:
        slope: bytes per block.
        intercept: bytes.
    """

    slope: float
    intercept: float


def fit_bytes_per_block(num_blocks: Sequence[int], peaks: Sequence[float]) -> LinearFit:
    """The slope of a linear least-squares fit of the peak against the number of blocks.

    Raises:
        ValueError: with fewer than two distinct depths.
    """
    if len(set(num_blocks)) < 2 or len(num_blocks) != len(peaks):
        raise ValueError(
            f"fit_bytes_per_block needs peaks at two or more depths, got depths {list(num_blocks)} and "
            f"{len(peaks)} peaks. HINT: measure at least two network depths."
        )
    slope, intercept = np.polyfit(np.asarray(num_blocks, dtype=float), np.asarray(peaks, dtype=float), 1)
    return LinearFit(float(slope), float(intercept))
