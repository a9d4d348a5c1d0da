"""Forward-Forward against back-propagation and MPC h = 1, side by side on the bundled MNIST digits.

Trains the ``ff_mnist`` recipe's model (:class:`lightning_mpc.recipes.MLPClassifier`: 3 hidden blocks of
``--hidden`` ReLU units and a linear readout) in one process, with the same seed, data, epochs, batches and
optimizer for every method:

* back-propagation (Lightning's default strategy);
* MPC with ``h = 1`` (:class:`lightning_mpc.MPCStrategy`; local heads, no gradient across blocks);
* Forward-Forward (:class:`lightning_mpc.FFRule` through :class:`lightning_mpc.RuleStrategy`) with the recipe's
  settings, the same with random negatives, and (``--methods ff-defaults``) the rule's defaults; each
  evaluated twice from the same trained model: the goodness arg-max over the labels (10 passes) and the
  readout on the neutral-label input (one pass).

Per method it reports the evaluation accuracy (the last 2,000 digits), the real memory of one step (the
allocator's peak above what was held before the step, :class:`lightning_mpc.RealMemoryMeter`, gradient
buffers allocated beforehand so that they do not hide the activations) and the step time, both measured on
the rules' own code outside Lightning (forward, the rule's passes and backward; no optimizer). Steps take
turns in rounds, and the time ratio is the median over rounds of the ratio to back-propagation's step in
the same round, so that drift in a shared machine's speed hits every method alike.

Usage::

    python benchmarks/ff.py                              # 10 epochs; prints Markdown tables
    python benchmarks/ff.py --methods ff-defaults        # one more FF setting (BP's step is the baseline)
    python benchmarks/ff.py --epochs 1 --limit 512       # a quick look
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_mpc import FFRule, MPCStrategy, RuleStrategy, horizon_backward
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
from lightning_mpc.core.heads import infer_heads
from lightning_mpc.recipes import MLPClassifier

Step = Callable[[], None]

FF_CONFIGS: dict[str, dict[str, Any]] = {
    "hardest negatives": {"goodness": "mean", "sharpness": 10.0, "label_value": 10.0, "negatives": "hardest"},
    "random negatives": {"goodness": "mean", "sharpness": 10.0, "label_value": 10.0, "negatives": "random"},
    "FFRule() defaults": {},
}
"""The FF settings compared: ``recipes/ff_mnist.yaml``'s, the same with random negatives, and the rule's defaults
(Hinton's form: sum goodness, threshold = units, sharpness 1, label value 1, random negatives)."""
METHODS = {"bp": "BP", "mpc": "MPC h=1", "ff-hardest": "FF, hardest negatives", "ff-random": "FF, random negatives"}
METHODS["ff-defaults"] = "FF, FFRule() defaults"


@dataclass
class Row:
    """One line of the table."""

    label: str
    accuracy: float
    fit_s: float
    peak_bytes: int = 0
    ratio: str = "-"


def _model(args: argparse.Namespace) -> MLPClassifier:
    return MLPClassifier(num_blocks=4, hidden=args.hidden, lr=args.lr)


def _strategy(label: str) -> Any:
    if label == "BP":
        return "auto"
    if label == "MPC h=1":
        return MPCStrategy(horizon=1, telemetry=False)
    return RuleStrategy(rule=FFRule(**FF_CONFIGS[label.removeprefix("FF, ")]), telemetry=False)


def train(args: argparse.Namespace) -> list[Row]:
    """Train every method and evaluate it (FF twice from the same model: goodness and readout prediction)."""
    rows: list[Row] = []
    setup = TrainingSetup(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, limit=args.limit)
    for label in (METHODS[m] for m in args.methods):
        L.seed_everything(args.seed, verbose=False)
        data = setup.datamodule()
        model = _model(args)
        trainer = bench_trainer(setup, _strategy(label), limit_val_batches=0)
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        fit_s = time.perf_counter() - start
        print(f"trained {label} in {fit_s:.0f} s", file=sys.stderr)
        if not label.startswith("FF"):
            accuracy = float(trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"])
            rows.append(Row(label, accuracy, fit_s))
            continue
        rule = trainer.strategy.rule
        for prediction in ("goodness", "readout"):
            rule.prediction = prediction
            accuracy = float(trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"])
            rows.append(Row(f"{label}: {prediction} prediction", accuracy, fit_s))
    return rows


# --------------------------------------------------------------------------- one step, outside Lightning
def _ff_step(model: MLPClassifier, x: Tensor, y: Tensor, config: str) -> Step:
    """One FF training step exactly as the rule runs it: FF passes, then the neutral-label forward and readout."""
    return rule_step(FFRule(**FF_CONFIGS[config]), model, list(model.net), x, y, block_input=x.flatten(1))


def _mpc_step(model: MLPClassifier, x: Tensor, y: Tensor) -> Step:
    blocks = list(model.net)
    heads = list(infer_heads(blocks, x.flatten(1)))

    def step() -> None:
        horizon_backward(blocks, heads, x.flatten(1), y, F.cross_entropy, horizon=1)

    return step


def measure(args: argparse.Namespace, rows: list[Row]) -> tuple[int, str]:
    """Real memory and step time of one step of each trained method and of back-propagation, side by side.

    Returns:
        Back-propagation's step peak (bytes), the baseline of the memory ratios, and the timing's noise note.
    """
    torch.manual_seed(args.seed)
    x = torch.randn(args.memory_batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.memory_batch,))
    factories: dict[str, Callable[[MLPClassifier, Tensor, Tensor], Step]] = {"BP": module_step}
    for label in dict.fromkeys(row.label.split(":")[0] for row in rows):
        if label == "MPC h=1":
            factories[label] = _mpc_step
        elif label.startswith("FF, "):
            factories[label] = lambda m, a, b, c=label.removeprefix("FF, "): _ff_step(m, a, b, c)
    steps: dict[str, tuple[Step, list[torch.nn.Parameter]]] = {}
    for label, factory in factories.items():
        torch.manual_seed(args.seed)
        model = _model(args)
        steps[label] = (factory(model, x, y), list(model.parameters()))
    peaks = {label: _peak(step, params) for label, (step, params) in steps.items()}
    timings = interleaved_rounds({label: lambda s=step: time_call(s) for label, (step, _) in steps.items()}, args.rounds)
    for row in rows:
        key = row.label.split(":")[0]
        row.peak_bytes = peaks[key]
        row.ratio = timings.ratio(key).format()
    return peaks["BP"], timings.noise_note()


def _peak(step: Step, params: list[torch.nn.Parameter]) -> int:
    """The least real peak of two steps after a warm-up (gradient buffers prepared beforehand)."""
    step_peak(step, params, "cpu")
    return min(step_peak(step, params, "cpu").peak_bytes for _ in range(2))


def depth_table(args: argparse.Namespace) -> str:
    """Real step memory against the number of hidden layers: FF holds one layer, back-propagation all of them."""
    torch.manual_seed(args.seed)
    x = torch.randn(args.memory_batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.memory_batch,))
    lines = [
        "| hidden layers | BP step peak (MiB) | MPC h=1 / BP | FF (random negatives) / BP |",
        "|---:|---:|---:|---:|",
    ]
    for depth in args.depths:
        peaks = {}
        for label, factory in (("BP", module_step), ("MPC", _mpc_step), ("FF", lambda m, a, b: _ff_step(m, a, b, "random negatives"))):
            torch.manual_seed(args.seed)
            model = MLPClassifier(num_blocks=depth + 1, hidden=args.hidden, lr=args.lr)
            peaks[label] = _peak(factory(model, x, y), list(model.parameters()))
        lines.append(
            f"| {depth} | {peaks['BP'] / MIB:.1f} | {peaks['MPC'] / peaks['BP']:.2f} | {peaks['FF'] / peaks['BP']:.2f} |"
        )
    return "\n".join(lines)


def table(rows: list[Row], bp_peak: int) -> str:
    """The Markdown table; ratios are to back-propagation's."""
    lines = [
        "| method | eval accuracy (%) | step peak (MiB) | memory / BP | step time / BP (IQR) | training run (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.label} | {100 * row.accuracy:.2f} | {row.peak_bytes / MIB:.2f} | "
            f"{row.peak_bytes / bp_peak:.2f} | {row.ratio} | {row.fit_s:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of every method")
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=None, help="use only this many digits per split (smoke runs)")
    parser.add_argument("--memory-batch", type=int, default=512, help="batch of the memory and time measurement")
    parser.add_argument("--rounds", type=int, default=20, help="timing rounds (one step of each method per round)")
    parser.add_argument("--depths", type=int, nargs="*", default=[3, 6, 12], help="hidden layers of the memory-depth table")
    parser.add_argument(
        "--methods", nargs="+", default=["bp", "mpc", "ff-hardest", "ff-random"], choices=list(METHODS),
        help="what to train (back-propagation's step is always measured, as the baseline of the ratios)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with quiet_lightning(all_warnings=True):
        rows = train(args)
    bp_peak, noise = measure(args, rows)
    print(f"`python benchmarks/ff.py {shlex.join(sys.argv[1:] if argv is None else argv)}`".replace(" `", "`"))
    print()
    print(table(rows, bp_peak))
    print()
    print(f"Machine: {machine_line()}. Timing: {noise}")
    if args.depths:
        print()
        print(f"Real step memory against depth (width {args.hidden}, batch {args.memory_batch}):")
        print()
        print(depth_table(args))


if __name__ == "__main__":
    main()
