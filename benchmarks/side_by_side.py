"""What the rule benchmarks (``benchmarks/ff.py``, ``benchmarks/sff.py``) share: the Trainer of the accuracy runs,
and one training step of each method measured side by side (real memory, time ratio to back-propagation).

Imported by those scripts from their own folder (``python benchmarks/ff.py`` puts ``benchmarks/`` on the path).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc import RealMemoryMeter

Step = Callable[[], None]


def accuracy_trainer(strategy: Any, epochs: int) -> L.Trainer:
    """A CPU Trainer for ``epochs`` epochs, no validation, logging or checkpoints; deterministic."""
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
    )


def bp_step(model: nn.Module, x: Tensor, y: Tensor) -> Step:
    """One back-propagation step: the model's forward, cross-entropy, backward."""

    def step() -> None:
        F.cross_entropy(model(x), y).backward()

    return step


def with_grads(step: Step, module: nn.Module) -> Step:
    """``step`` with gradient buffers allocated beforehand and zeroed in place (as ``zero_grad(set_to_none=False)``),
    so that the memory measured is what the step itself adds."""
    params = list(module.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)

    def run() -> None:
        for p in params:
            p.grad.zero_()  # type: ignore[union-attr]
        step()

    return run


def measure_steps(steps: dict[str, Step], rounds: int, baseline: str = "BP") -> tuple[dict[str, int], dict[str, float]]:
    """Real peak memory (least of 2 steps after a warm-up) and the median time ratio to ``baseline``.

    Steps take turns, one each per round, and each round's ratio is taken to the baseline's step of that round,
    so that drift in a shared machine's speed hits every method alike.

    Returns:
        ``(peak bytes, time ratio)`` per step name.
    """
    peaks: dict[str, int] = {}
    for name, step in steps.items():
        step()
        runs = []
        for _ in range(2):
            with RealMemoryMeter() as meter:
                step()
            runs.append(meter.peak_bytes)
        peaks[name] = min(runs)
    ratios: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        spent = {}
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            spent[name] = time.perf_counter() - start
        for name in steps:
            ratios[name].append(spent[name] / spent[baseline])
    return peaks, {name: statistics.median(values) for name, values in ratios.items()}
