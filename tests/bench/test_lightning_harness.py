"""The harness's Lightning parts: the checkpointed baseline, step timing and memory callbacks, side-by-side runs."""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_mpc.bench import (
    CheckpointedSequential,
    StepMemory,
    StepTimer,
    TrainingSetup,
    backprop_method,
    checkpoint_method,
    mpc_method,
    time_methods,
    train_and_measure,
    with_checkpointing,
)
from lightning_mpc.recipes import MLPClassifier, ResidualMLPClassifier


@pytest.mark.parametrize("segment", [1, 3])
@pytest.mark.parametrize("model", ["mlp", "residual"])
def test_checkpointed_models_have_exact_gradients(segment: int, model: str) -> None:
    def make() -> L.LightningModule:
        if model == "mlp":
            return MLPClassifier(num_blocks=5, hidden=16, in_features=12, num_classes=4)
        return ResidualMLPClassifier(num_steps=3, width=16, in_features=12, num_classes=4)

    plain = make()
    checkpointed = with_checkpointing(make(), segment)
    assert isinstance(checkpointed.net, CheckpointedSequential)
    checkpointed.load_state_dict(plain.state_dict())  # the same keys
    x, y = torch.randn(6, 12), torch.randint(0, 4, (6,))
    for module in (plain, checkpointed):
        F.cross_entropy(module(x), y).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    with pytest.raises(TypeError, match="needs a model whose `net` is an nn.Sequential.*HINT"):
        with_checkpointing(L.LightningModule(), 1)


def test_step_timer_skips_the_warm_up_and_times_until_the_end_or_the_next_step() -> None:
    none: Any = None
    timer = StepTimer(skip=1)
    for _ in range(3):
        timer.on_train_batch_start(none, none, none, 0)
        timer.on_train_batch_end(none, none, none, none, 0)
    assert len(timer.times_s) == 3 and len(timer.measured()) == 2 and timer.median_ms >= 0
    laps = StepTimer(skip=0, until="next")
    for _ in range(3):
        laps.on_train_batch_start(none, none, none, 0)
    laps.on_train_end(none, none)
    assert len(laps.times_s) == 3 and laps.mean_ms >= 0
    assert StepTimer(skip=5).measured() == [] and str(StepTimer().median_ms) == "nan"
    with pytest.raises(ValueError, match="until='later'"):
        StepTimer(until="later")  # type: ignore[arg-type]


def test_side_by_side_runs_measure_real_memory_and_restore_the_optimizers() -> None:
    setup = TrainingSetup(num_blocks=8, epochs=1, batch_size=128, limit=256)
    seen: list[Any] = []

    class Spy(StepMemory):
        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            seen.append(trainer.optimizers[0])
            super().on_train_end(trainer, pl_module)

    bp = train_and_measure(backprop_method(), setup, limit_val_batches=0)
    again = train_and_measure(dataclasses.replace(backprop_method(), memory=Spy), setup, limit_val_batches=0)
    local = train_and_measure(mpc_method(1), setup, limit_val_batches=0)
    assert bp.memory_method == "cpu-allocator-events" and 0 < bp.peak_bytes
    assert again.peak_bytes == bp.peak_bytes and again.accuracy == bp.accuracy  # same seed, same step
    assert "zero_grad" not in vars(seen[0])  # the in-place zeroing was given back
    assert local.peak_bytes < bp.peak_bytes  # batch 128: h = 1 holds less than back-propagation
    assert 0.0 <= local.accuracy <= 1.0


def test_time_methods_pairs_rounds_and_refuses_equal_keys() -> None:
    setup = TrainingSetup(num_blocks=4, epochs=1, batch_size=64, limit=128)
    timings = time_methods([backprop_method(), checkpoint_method(1)], setup, rounds=2, steps=1, warmup=1)
    assert list(timings.seconds) == ["BP", "BP + checkpoint every block"] and timings.rounds == 2
    assert timings.ratio("BP").median == 1.0
    with pytest.raises(ValueError, match="keys must differ"):
        time_methods([mpc_method(1), mpc_method(1)], setup, rounds=1, steps=1)
