"""Worked example of horizon selection: an 8-block MLP on the bundled MNIST digits.

The method three ways (see ``docs/horizon.md``):

1. ``MPCStrategy(horizon="auto", memory_budget=...)`` selects the horizon on the first 4 training
   batches and trains with it;
2. ``HorizonFinder`` with ``Trainer(max_steps=0)`` reports the choice for the two other objectives
   without training;
3. ``HorizonFinder(min_alignment=..., epochs=(0, 1))`` selects again after one epoch, once the local
   heads have learned;

and the test accuracies next to back-propagation's from the same seed.

Run from the repository root (about 20 s on 2 CPU cores; batch 2048, where activations rather than
gradient buffers dominate a step)::

    python recipes/select_horizon_mnist.py --out docs/img
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc import HorizonFinder, MPCMixin, MPCStrategy
from lightning_mpc.data import BundledMNIST


class MLP(MPCMixin, L.LightningModule):
    """``depth`` blocks: ``Linear + ReLU`` of width ``width``, then a linear classifier; Adam, lr 1e-3."""

    def __init__(self, depth: int = 8, width: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU())]
        layers += [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth - 2)]
        layers.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("accuracy", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _trainer(**kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**(defaults | kwargs))


def _fit_and_test(
    strategy: MPCStrategy, epochs: int, seed: int, batch_size: int, callbacks: Sequence[L.Callback] = ()
) -> tuple[MPCStrategy, float]:
    torch.manual_seed(seed)
    model = MLP()
    data = BundledMNIST(batch_size=batch_size)
    trainer = _trainer(strategy=strategy, max_epochs=epochs, callbacks=list(callbacks))
    trainer.fit(model, data)
    (result,) = trainer.test(model, data, verbose=False)
    return strategy, 100 * result["accuracy"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNG")
    parser.add_argument("--budget", default="16MB", help="memory budget for horizon='auto'")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument(
        "--batch-size", type=int, default=2048, help="training batch (activations, not gradients, dominate a step)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()

    auto, auto_accuracy = _fit_and_test(MPCStrategy(horizon="auto", memory_budget=args.budget), args.epochs, args.seed, args.batch_size)
    report = auto.horizon_report
    assert report is not None
    print(report.summary())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "horizon_selection_mnist.png"
    report.plot().savefig(path, dpi=120)

    print("\nOther objectives (HorizonFinder, no training):")
    for objective in ({"min_alignment": 0.9}, {"memory_weight": 1e-6}):
        torch.manual_seed(args.seed)
        finder = HorizonFinder(**objective)  # type: ignore[arg-type]
        _trainer(max_steps=0, callbacks=[finder]).fit(MLP(), BundledMNIST(batch_size=args.batch_size))
        assert finder.report is not None
        chosen = finder.report.horizon
        print(
            f"  {finder.report.objective.describe()}: h = {chosen}, cos^2 {finder.report.alignment_at(chosen):.3f}, "
            f"{finder.report.memory_at(chosen) / 1e6:.3f} MB"
        )

    print("\nmin_alignment = 0.9, selected at the start of epochs 0 and 1 (HorizonFinder(epochs=(0, 1))):")
    finder = HorizonFinder(min_alignment=0.9, epochs=(0, 1), probes=range(1, report.num_blocks + 1))
    reselected, reselected_accuracy = _fit_and_test(MPCStrategy(horizon=1), args.epochs, args.seed, args.batch_size, [finder])
    for epoch, epoch_report in finder.reports.items():
        measured = ", ".join(f"{h}: {a:.3f}" for h, a in epoch_report.alignment.items())
        print(f"  epoch {epoch}: h = {epoch_report.horizon}; cos^2 by h: {measured}")

    _, bp_accuracy = _fit_and_test(MPCStrategy(horizon=report.num_blocks), args.epochs, args.seed, args.batch_size)
    print(f"\ntest accuracy after {args.epochs} epochs:")
    print(f"  memory_budget = {args.budget}, h = {auto.horizon}: {auto_accuracy:.2f} %")
    print(f"  min_alignment = 0.9, re-selected, h = {reselected.horizon} at the end: {reselected_accuracy:.2f} %")
    print(f"  back-propagation (h = {report.num_blocks}): {bp_accuracy:.2f} %")
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
