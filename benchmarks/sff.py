"""Scalable Forward-Forward against back-propagation: accuracy on the bundled digits, step time and real memory.

Two measurements, each side by side in one process:

* **Accuracy** (``--epochs``, same seed, data, batches and optimizer): torchvision ResNet-18 with a
  one-channel ImageNet stem (:class:`lightning_mpc.recipes.ResNetClassifier`) and, with ``--models``,
  MobileNetV3-Small (:class:`lightning_mpc.recipes.MobileNetV3Classifier`), trained with back-propagation
  and with :class:`lightning_mpc.SFFRule` (``--losses``: the cross-entropy and the margin variant, log
  logits); each SFF model is evaluated three times: the blocks' averaged goodness votes, the last goodness
  block's vote, and the model's own classifier.
* **Step time and real memory** for 10 and 100 classes (``--classes``): one training step (forward, the
  rule's block losses and backward; no optimizer) of back-propagation and of the SFF rule's own code on a
  random batch, the memory as the allocator's peak above what was held before the step
  (:class:`lightning_mpc.RealMemoryMeter`, gradient buffers allocated beforehand), the time as the median
  over rounds of the ratio to back-propagation's step in the same round.

Usage::

    python benchmarks/sff.py                                   # ResNet-18, 3 epochs; prints Markdown tables
    python benchmarks/sff.py --models resnet18 mobilenet_v3_small --epochs 3
    python benchmarks/sff.py --epochs 0                        # only step time and memory
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_mpc import RuleStrategy, SFFRule
from lightning_mpc.bench import (
    MIB,
    TrainingSetup,
    bench_trainer,
    interleaved_rounds,
    machine_line,
    module_step,
    quiet_lightning,
    rule_step,
    step_peak,
    time_call,
)
from lightning_mpc.lightning.mixin import resolve_blocks
from lightning_mpc.recipes import MobileNetV3Classifier, ResNetClassifier

Step = Callable[[], None]



def build(name: str, num_classes: int, lr: float) -> L.LightningModule:
    """The recipe model ``name`` for one-channel digits."""
    if name == "resnet18":
        return ResNetClassifier("resnet18", num_classes, lr=lr, in_channels=1, stem="imagenet")
    if name in ("mobilenet_v3_small", "mobilenet_v3_large"):
        return MobileNetV3Classifier(name, num_classes, in_channels=1, lr=lr)
    raise ValueError(f"Unknown model {name!r}. HINT: use resnet18, mobilenet_v3_small or mobilenet_v3_large.")


def accuracy_table(args: argparse.Namespace) -> str:
    """Train back-propagation and SFF for every model; one table row per evaluation."""
    lines = ["| model | method | eval accuracy (%) | training run (s) |", "|---|---|---:|---:|"]
    setup = TrainingSetup(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, limit=args.limit)
    for name in args.models:
        for method in ("BP", *(f"SFF, {loss} loss" for loss in args.losses)):
            L.seed_everything(args.seed, verbose=False)
            data = setup.datamodule()
            model = build(name, 10, args.lr)
            loss = method.removeprefix("SFF, ").removesuffix(" loss")
            strategy: Any = "auto"
            if method != "BP":
                strategy = RuleStrategy(rule=SFFRule(loss=loss, logits=args.logits), telemetry=False)  # type: ignore[arg-type]
            trainer = bench_trainer(setup, strategy, limit_val_batches=0)
            start = time.perf_counter()
            trainer.fit(model, datamodule=data)
            fit_s = time.perf_counter() - start
            print(f"trained {name} with {method} in {fit_s:.0f} s", file=sys.stderr)
            if method == "BP":
                accuracy = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]
                lines.append(f"| {name} | BP | {100 * accuracy:.2f} | {fit_s:.0f} |")
                continue
            rule = trainer.strategy.rule
            for inference, shown in (("average", "averaged votes"), ("last", "last block's vote"), ("model", "classifier")):
                rule.inference = inference
                accuracy = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]
                lines.append(f"| {name} | {method}: {shown} | {100 * accuracy:.2f} | {fit_s:.0f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- one step, outside Lightning
def _sff_step(model: L.LightningModule, x: Tensor, y: Tensor) -> Step:
    """One SFF step as the rule runs it inside the model's forward (hooks, block losses, detached boundaries)."""
    return rule_step(SFFRule(), model, resolve_blocks(model), x, y)


def cost_table(args: argparse.Namespace) -> str:
    """Step time and real memory of SFF against back-propagation, per model and number of classes."""
    lines = [
        "| model | classes | BP step peak (MiB) | SFF step peak (MiB) | memory / BP | step time / BP (IQR) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for name in args.models:
        for classes in args.classes:
            torch.manual_seed(args.seed)
            x = torch.randn(args.memory_batch, 1, 28, 28)
            y = torch.randint(0, classes, (args.memory_batch,))
            steps: dict[str, tuple[Step, list[torch.nn.Parameter]]] = {}
            for method, factory in (("BP", module_step), ("SFF", _sff_step)):
                torch.manual_seed(args.seed)
                model = build(name, classes, args.lr)
                model.train()
                steps[method] = (factory(model, x, y), list(model.parameters()))
            peaks = {}
            for method, (step, params) in steps.items():
                step_peak(step, params, "cpu")  # warm-up
                peaks[method] = min(step_peak(step, params, "cpu").peak_bytes for _ in range(2))
            timings = interleaved_rounds({m: lambda s=step: time_call(s) for m, (step, _) in steps.items()}, args.rounds)
            lines.append(
                f"| {name} | {classes} | {peaks['BP'] / MIB:.1f} | {peaks['SFF'] / MIB:.1f} | "
                f"{peaks['SFF'] / peaks['BP']:.2f} | {timings.ratio('SFF').format()} |"
            )
            notes.append(f"- {name}, {classes} classes: {timings.noise_note()}")
            print(f"measured {name} with {classes} classes", file=sys.stderr)
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18"])
    parser.add_argument("--epochs", type=int, default=3, help="0 skips the accuracy runs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05, help="peak SGD learning rate (cosine schedule) of both methods")
    parser.add_argument("--limit", type=int, default=None, help="use only this many digits per split (smoke runs)")
    parser.add_argument("--losses", nargs="+", default=["ce", "margin"], choices=["ce", "margin"], help="SFF block losses")
    parser.add_argument("--logits", default="log", choices=["log", "raw"], help="SFF logits (see SFFRule)")
    parser.add_argument("--classes", type=int, nargs="*", default=[10, 100], help="none: skip the cost table")
    parser.add_argument("--memory-batch", type=int, default=64, help="batch of the step time and memory measurement")
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds (one step of each method per round)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"`python benchmarks/sff.py {shlex.join(sys.argv[1:] if argv is None else argv)}`".replace(" `", "`"))
    print()
    print(f"Machine: {machine_line()}.")
    if args.epochs > 0:
        with quiet_lightning(all_warnings=True):
            print()
            print(accuracy_table(args))
    if args.classes:
        print()
        print(cost_table(args))


if __name__ == "__main__":
    main()
