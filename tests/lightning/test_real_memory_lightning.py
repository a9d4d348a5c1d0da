"""Real memory inside Lightning: the peak of training steps falls with the horizon and does not grow with depth."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from lightning_mpc import MPCStrategy
from lightning_mpc.core.realmem import RealMemoryMeter
from tests.lightning.helpers import Classifier, loader, mlp_net, trainer, vector_data


class PeakOfStepsTwoAndThree(L.Callback):
    """Allocator bytes at their peak during optimizer steps 2 and 3, above what was allocated at train start."""

    def __init__(self) -> None:
        self.meter = RealMemoryMeter()
        self.peak: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.meter.__enter__()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == 1:
            self.meter.mark()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == 3:
            self.meter.__exit__(None, None, None)
            assert self.meter.result is not None
            self.peak = max(self.meter.result.interval_peaks)


def _peak(depth: int, horizon: int) -> int:
    torch.manual_seed(0)
    module = Classifier(net=mlp_net(width=32, depth=depth))  # activations dominate: batch 4096, width 32
    probe = PeakOfStepsTwoAndThree()
    trainer(strategy=MPCStrategy(horizon=horizon, telemetry=False), max_steps=3, callbacks=[probe]).fit(
        module, loader(vector_data(n=3 * 4096), batch_size=4096)
    )
    assert probe.peak is not None
    return probe.peak


def test_peak_inside_lightning_falls_with_the_horizon_and_not_with_depth() -> None:
    shallow, deep = _peak(8, 2), _peak(16, 2)
    assert deep <= 1.15 * shallow, f"h=2: 16 blocks hold {deep} B, 8 blocks {shallow} B"
    by_horizon = [_peak(16, h) for h in (1, 2, 4, 16)]
    assert by_horizon == sorted(by_horizon), by_horizon
    assert by_horizon[0] < 0.6 * by_horizon[-1], by_horizon
