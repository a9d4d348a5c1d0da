"""Side-by-side training runs in Lightning on the bundled MNIST digits: accuracy, real memory, interleaved timing.

Every method trains a fresh model from the same seed on the same batches (:func:`train_and_measure`); its
step time comes from a separate timing phase in which the methods take turns on fresh models, one short fit
each per round (:func:`time_methods`, over :func:`~lightning_mpc.bench.timing.interleaved_rounds`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lightning_mpc.bench.callbacks import StepTimer
from lightning_mpc.bench.methods import Method
from lightning_mpc.bench.timing import NOISE_LIMIT, Timings, interleaved_rounds
from lightning_mpc.data import TRAIN_SIZE, BundledMNIST

__all__ = ["MethodResult", "TrainingSetup", "bench_trainer", "fit_step_seconds", "time_methods", "train_and_measure"]


@dataclass(frozen=True)
class TrainingSetup:
    """What every method of a comparison shares.

    Attributes:
        num_blocks: blocks ``T`` of the model.
        epochs: training epochs.
        batch_size: samples per batch.
        seed: seeds the weights (every run starts from the same ones) and the batch order.
        limit: digits per split for smoke runs, ``None`` for all.
        accelerator: ``"cpu"`` or ``"gpu"``.
    """

    num_blocks: int = 8
    epochs: int = 5
    batch_size: int = 128
    seed: int = 0
    limit: int | None = None
    accelerator: str = "cpu"

    def datamodule(self) -> BundledMNIST:
        """The bundled digits with this setup's batch size, limit and shuffling seed."""
        return BundledMNIST(batch_size=self.batch_size, limit=self.limit, shuffle_seed=self.seed)

    @property
    def batches_per_epoch(self) -> int:
        """Training batches per epoch."""
        return -(-min(TRAIN_SIZE, self.limit or TRAIN_SIZE) // self.batch_size)


@dataclass
class MethodResult:
    """What one method's training run measured.

    Attributes:
        method: the method.
        accuracy: accuracy on the evaluation split after training, 0..1.
        peak_bytes: the real peak of one training step (see the method's memory source).
        memory_method: how the memory was measured (``"cpu-allocator-events"``, ``"cuda-allocator"``, ...).
        fit_s: wall time of ``Trainer.fit``.
    """

    method: Method
    accuracy: float
    peak_bytes: int
    memory_method: str | None
    fit_s: float


def bench_trainer(
    setup: TrainingSetup, strategy: Any, callbacks: Sequence[Callback] = (), *, logger: Any = False, **kwargs: Any
) -> L.Trainer:
    """A Trainer for side-by-side runs: one device, no checkpoints, no summary, no sanity check; deterministic on CPU.

    Args:
        setup: the shared setup (accelerator, epochs).
        strategy: the Trainer's strategy.
        callbacks: extra callbacks.
        logger: the Trainer's logger (none by default).
        **kwargs: other Trainer arguments (they override ``max_epochs`` and the progress bar, which is off).
    """
    options: dict[str, Any] = {
        "accelerator": setup.accelerator,
        "devices": 1,
        "strategy": strategy,
        "max_epochs": setup.epochs,
        "logger": logger,
        "callbacks": list(callbacks),
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "deterministic": setup.accelerator == "cpu",
        **kwargs,
    }
    return L.Trainer(**options)


def train_and_measure(
    method: Method, setup: TrainingSetup, *, callbacks: Sequence[Callback] = (), **trainer_kwargs: Any
) -> MethodResult:
    """Train a fresh model with ``method``, then measure its accuracy on the evaluation split.

    The method's memory source measures one training step's real peak during the fit.

    Args:
        method: what to train.
        setup: the shared setup.
        callbacks: extra callbacks (a progress bar, ...).
        **trainer_kwargs: passed to :func:`bench_trainer` (``logger``, ``log_every_n_steps``, ...).

    Raises:
        RuntimeError: if no training step was measured.
    """
    L.seed_everything(setup.seed, workers=True, verbose=False)
    datamodule = setup.datamodule()
    model = method.make_model(setup.num_blocks)
    memory = method.memory()
    trainer = bench_trainer(setup, method.make_strategy(), [memory, *callbacks], **trainer_kwargs)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)
    peak = getattr(memory, "peak_bytes", None)
    if peak is None:
        raise RuntimeError(
            f"{method.key} trained no measured step, so it has no memory figure. HINT: raise --limit or lower "
            "--batch-size so that every epoch has at least two batches."
        )
    return MethodResult(method, float(metrics[0]["test/acc"]), int(peak), getattr(memory, "method", None), fit_s)


def fit_step_seconds(method: Method, setup: TrainingSetup, *, steps: int, warmup: int = 3) -> float:
    """Median step time (seconds) of ``steps`` training steps of a fresh model, after ``warmup`` steps."""
    L.seed_everything(setup.seed, workers=True, verbose=False)
    timer = StepTimer(skip=warmup)
    trainer = bench_trainer(
        setup, method.make_strategy(), [timer], max_steps=steps + warmup, max_epochs=-1, limit_val_batches=0
    )
    trainer.fit(method.make_model(setup.num_blocks), datamodule=setup.datamodule())
    return timer.median_ms / 1000.0


def time_methods(
    methods: Sequence[Method],
    setup: TrainingSetup,
    *,
    rounds: int,
    steps: int,
    warmup: int = 3,
    noise_limit: float = NOISE_LIMIT,
    on_round: Callable[[int], None] | None = None,
) -> Timings:
    """Interleaved rounds of short fits: every method's median step once per round; the first method is the baseline.

    Args:
        methods: the rows, baseline (back-propagation) first; their :attr:`Method.key` must differ.
        setup: the shared setup.
        rounds: timing rounds.
        steps: timed steps per method and round.
        warmup: untimed steps before them.
        noise_limit: flag the run when the baseline's rounds vary by more than this factor.
        on_round: called after each round with its index.

    Raises:
        ValueError: if two methods share a key.
    """
    keys = [m.key for m in methods]
    if len(set(keys)) != len(keys):
        raise ValueError(f"time_methods: method keys must differ, got {keys}. HINT: give the methods distinct labels.")
    runs = {m.key: partial(fit_step_seconds, m, setup, steps=steps, warmup=warmup) for m in methods}
    return interleaved_rounds(runs, rounds, noise_limit=noise_limit, on_round=on_round)
