"""PEPITA on the bundled digits, side by side with back-propagation, feedback alignment and MPC at h = 1.

Every method trains the same model from the same weights on the same batches, in one process:
:class:`lightning_mpc.recipes.DropoutMLP` 784-1024-10 (ReLU, dropout 10 %, no biases, He-uniform), SGD with
momentum 0.9, batch 64, on the first 8,000 bundled digits; the last 2,000 evaluate. The methods:

* ``bp``: back-propagation (Lightning's default strategy);
* ``fa``: feedback alignment (Lillicrap et al. 2016): the backward through each layer uses a fixed random
  matrix in place of ``W^T`` (an autograd function in this script, not a registered rule);
* ``pepita``: ``strategy="pepita"`` (:class:`lightning_mpc.PEPITARule`, F fixed);
* ``pepita_mirror``: PEPITA with weight mirroring (``PEPITARule(mirror=True)``);
* ``pepita_hebbian``: PEPITA-Hebbian (``PEPITARule(variant="hebbian")``);
* ``mpc``: ``MPCStrategy(horizon=1)`` (the hidden block learns from a linear local head).

Per method: the evaluation accuracy after ``--epochs`` epochs; the real memory of one training step (the
allocator's peak above what the process held when the step began, :class:`lightning_mpc.RealMemoryMeter`,
median of steps 3 to 8 of a separate run in which every step is measured, telemetry off) and, as a
breakdown, the bytes saved for backward (:class:`lightning_mpc.SavedTensorMeter`); the time per epoch as a
ratio to back-propagation's, from a separate timing phase in which the methods take turns (``--rounds``
rounds of ``--timing-steps`` steps on fresh models; the ratio is taken within each round, so a shared
machine's drift hits every method alike). For PEPITA it also logs the angle between its update and
back-propagation's gradient per layer (every ``--alignment-every`` steps) and, with mirroring, the angle between
every factor ``B_l`` of ``F`` and ``W_l^T``.

Usage::

    python benchmarks/pepita.py                          # 10 epochs per method; prints the Markdown table
    python benchmarks/pepita.py --epochs 1 --limit 512   # a quick look
    python benchmarks/pepita.py --methods pepita,bp --lr 0.05 --json /tmp/pepita.json
    python benchmarks/pepita.py --seeds 0,1,2            # accuracy as mean and range over three seeds
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_mpc import MPCStrategy, PEPITARule, RealMemoryMeter, RuleStrategy, SavedTensorMeter
from lightning_mpc.bench import StepTimer, machine_line, quiet_lightning
from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.recipes import ClassificationData, DropoutMLP

MIB = 2**20
METHODS = ("bp", "fa", "pepita", "pepita_mirror", "pepita_hebbian", "mpc")
LABELS = {
    "bp": "back-propagation",
    "fa": "feedback alignment",
    "pepita": "PEPITA",
    "pepita_mirror": "PEPITA + weight mirroring",
    "pepita_hebbian": "PEPITA-Hebbian",
    "mpc": "MPC h = 1",
}


# --------------------------------------------------------------------------- feedback alignment
class _FeedbackAlignedLinear(torch.autograd.Function):
    """``x W^T``, whose backward sends ``g B`` (a fixed random ``B`` shaped like ``W``) to the input instead of ``g W``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, feedback: Tensor) -> Tensor:
        ctx.save_for_backward(x, feedback)
        return x @ weight.T

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor, None]:
        x, feedback = ctx.saved_tensors
        return (grad @ feedback if ctx.needs_input_grad[0] else None), grad.T @ x, None


class FeedbackAlignmentLinear(nn.Linear):
    """A bias-free ``nn.Linear`` trained by feedback alignment: a fixed random ``B`` (He-uniform, like ``W``)."""

    def __init__(self, layer: nn.Linear, generator: torch.Generator) -> None:
        super().__init__(layer.in_features, layer.out_features, bias=False)
        with torch.no_grad():
            self.weight.copy_(layer.weight)
        bound = math.sqrt(6.0 / layer.in_features)
        feedback = (torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound
        self.register_buffer("feedback", feedback)

    def forward(self, x: Tensor) -> Tensor:
        return _FeedbackAlignedLinear.apply(x, self.weight, self.feedback)


def feedback_alignment(model: DropoutMLP, seed: int) -> DropoutMLP:
    """``model`` with every linear layer replaced by a :class:`FeedbackAlignmentLinear` of the same weights."""
    generator = torch.Generator().manual_seed(seed + 1)
    assert model.net is not None
    for parent in [model.net, *model.net.children()]:
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and not isinstance(child, FeedbackAlignmentLinear):
                if child.bias is not None:
                    raise ValueError("The feedback-alignment baseline here handles bias-free layers. HINT: bias=False.")
                setattr(parent, name, FeedbackAlignmentLinear(child, generator))
    return model


# --------------------------------------------------------------------------- measuring
class StepMemory(Callback):
    """Real memory (allocator peak) and bytes saved for backward of every training step, from the first.

    Every step is measured, so that a buffer a step replaces (the previous step's gradients, freed by
    ``zero_grad``) was allocated inside a measurement and its release is counted: the figure is what the step
    adds to what the process held when it began. The results are medians over the steps from ``skip`` on
    (step 0 creates the optimizer state).
    """

    def __init__(self, steps: int = 8, skip: int = 2) -> None:
        self.steps = set(range(steps))
        self.skip = skip
        self.real: list[int] = []
        self.saved: list[int] = []
        self._meters: tuple[RealMemoryMeter, SavedTensorMeter] | None = None

    @property
    def real_bytes(self) -> int:
        """Median real peak over the measured steps after ``skip``."""
        return int(statistics.median(self.real[self.skip :]))

    @property
    def saved_bytes(self) -> int:
        """Median peak of bytes saved for backward over the measured steps after ``skip``."""
        return int(statistics.median(self.saved[self.skip :]))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step in self.steps and self._meters is None:
            self._meters = (RealMemoryMeter(pl_module.device), SavedTensorMeter(exclude=pl_module.parameters()))
            for meter in self._meters:
                meter.__enter__()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._meters is not None:
            real, saved = self._meters
            saved.__exit__(None, None, None)
            real.__exit__(None, None, None)
            self.real.append(real.peak_bytes)
            self.saved.append(saved.peak_bytes)
            self._meters = None


class AngleLog(EngineObserver):
    """The PEPITA rule's angle signals, with the step they were measured at."""

    def __init__(self) -> None:
        self.step = 0
        self.angles: dict[str, list[tuple[int, float]]] = {}

    def step_started(self) -> None:
        self.step += 1

    def signal(self, name: str, index: int | None, value: float | Tensor) -> None:
        if name.endswith("angle"):
            key = f"{name}/{'all' if index is None else f'block_{index:02d}'}"
            self.angles.setdefault(key, []).append((self.step, float(value)))

    def mean_after(self, key: str, step: int) -> float:
        values = [v for s, v in self.angles.get(key, []) if s > step]
        return statistics.fmean(values) if values else float("nan")


@dataclass
class Result:
    """What one method measured."""

    method: str
    accuracy: float
    epoch_accuracy: list[float]
    fit_s: float
    seed_accuracy: list[float]
    real_bytes: int = 0
    saved_bytes: int = 0
    ratios: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    angles: dict[str, float] = field(default_factory=dict)

    @property
    def time_ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")


class EpochAccuracy(Callback):
    """Validation accuracy after every epoch."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self.values.append(float(trainer.callback_metrics["val/acc"]))


def _model(args: argparse.Namespace, method: str) -> DropoutMLP:
    L.seed_everything(args.seed, workers=True, verbose=False)
    model = DropoutMLP(
        hidden=[args.hidden], in_features=784, dropout=args.dropout, lr=args.lr, milestones=args.milestones
    )
    return feedback_alignment(model, args.seed) if method == "fa" else model


def _rule(args: argparse.Namespace, method: str, alignment_every: int) -> PEPITARule:
    kwargs: dict[str, Any] = {"output_error": args.output_error, "alignment_every": alignment_every}
    if method == "pepita_mirror":
        kwargs.update(mirror=True, mirror_lr=args.mirror_lr, pre_mirror_epochs=args.pre_mirror_epochs)
    if method == "pepita_hebbian":
        kwargs["variant"] = "hebbian"
    return PEPITARule(**kwargs)


def _strategy(args: argparse.Namespace, method: str, observer: EngineObserver | None = None) -> Any:
    if method == "mpc":
        return MPCStrategy(horizon=1, telemetry=False)
    if method.startswith("pepita"):
        rule = _rule(args, method, args.alignment_every if observer is not None else 0)
        rule.observer = observer
        return RuleStrategy(rule=rule, telemetry=False)
    return "auto"


def _data(args: argparse.Namespace) -> ClassificationData:
    return ClassificationData(
        name="bundled", batch_size=args.batch_size, limit=args.limit, seed=args.seed, normalize=args.normalize
    )


def _trainer(args: argparse.Namespace, strategy: Any, callbacks: list[Callback], **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        strategy=strategy,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def train_and_evaluate(args: argparse.Namespace, method: str) -> Result:
    """Train fresh models with ``method`` for ``args.epochs`` epochs, once per seed; accuracy, memory and angles.

    Memory, angles and the per-epoch curve are those of the first seed.
    """
    first = _train_once(args, method)
    for seed in args.seeds[1:]:
        first.seed_accuracy.append(_train_once(argparse.Namespace(**{**vars(args), "seed": seed}), method).accuracy)
    return first


def _train_once(args: argparse.Namespace, method: str) -> Result:
    model = _model(args, method)
    observer = AngleLog() if method.startswith("pepita") else None
    accuracy = EpochAccuracy()
    trainer = _trainer(args, _strategy(args, method, observer), [accuracy], max_epochs=args.epochs)
    start = time.perf_counter()
    datamodule = _data(args)
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)
    angles: dict[str, float] = {}
    if observer is not None:
        steps_per_epoch = observer.step // max(args.epochs, 1)
        last_epoch = observer.step - steps_per_epoch
        angles = {key: observer.mean_after(key, last_epoch) for key in sorted(observer.angles)}
    return Result(
        method=method,
        accuracy=float(metrics[0]["test/acc"]),
        epoch_accuracy=accuracy.values,
        fit_s=fit_s,
        angles=angles,
        seed_accuracy=[float(metrics[0]["test/acc"])],
    )


def time_steps(args: argparse.Namespace, method: str) -> float:
    """Median step time (s) of ``args.timing_steps`` steps of a fresh model, after 3 warm-up steps."""
    timer = StepTimer(skip=3)
    trainer = _trainer(
        args, _strategy(args, method), [timer], max_steps=args.timing_steps + 3, max_epochs=-1, limit_val_batches=0
    )
    trainer.fit(_model(args, method), datamodule=_data(args))
    return timer.median_ms / 1000.0


def measure_memory(args: argparse.Namespace, method: str) -> StepMemory:
    """Real and saved-for-backward peaks of steps 3 to 8 of a fresh model (medians), telemetry off."""
    memory = StepMemory()
    trainer = _trainer(args, _strategy(args, method), [memory], max_steps=8, max_epochs=-1, limit_val_batches=0)
    trainer.fit(_model(args, method), datamodule=_data(args))
    return memory


# --------------------------------------------------------------------------- reporting
def table(results: Sequence[Result]) -> str:
    """The Markdown table; ratios are to back-propagation (the first row when it ran)."""
    bp = next((r for r in results if r.method == "bp"), results[0])
    seeds = len(results[0].seed_accuracy)
    spread = f" (mean of {seeds} seeds, min-max)" if seeds > 1 else ""
    lines = [
        (
            f"| method | eval accuracy (%){spread} | epoch time / BP | real step memory (MiB) | memory / BP | "
            "saved for backward (MiB) |"
        ),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        values = [100 * a for a in r.seed_accuracy]
        shown = f"{statistics.fmean(values):.2f}" + (f" ({min(values):.2f}-{max(values):.2f})" if seeds > 1 else "")
        lines.append(
            f"| {LABELS[r.method]} | {shown} | {r.time_ratio / bp.time_ratio:.2f} | "
            f"{r.real_bytes / MIB:.2f} | {r.real_bytes / bp.real_bytes:.2f} | {r.saved_bytes / MIB:.2f} |"
        )
    return "\n".join(lines)


def angle_lines(results: Sequence[Result]) -> list[str]:
    """The PEPITA runs' angles, averaged over the last epoch."""
    lines = []
    for r in results:
        if r.angles:
            shown = ", ".join(f"{key} {value:.1f}" for key, value in r.angles.items())
            lines.append(f"- {LABELS[r.method]} (degrees, mean over the last epoch): {shown}")
    return lines


# --------------------------------------------------------------------------- entry point
def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"methods must be among {', '.join(METHODS)}, got {text!r}")
    return names


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(prog="python benchmarks/pepita.py", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", type=_methods, default=list(METHODS), help="comma-separated (default: all)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per method (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden width (default: %(default)s)")
    parser.add_argument(
        "--dropout", type=float, default=0.1, help="dropout after the hidden layer (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default: %(default)s)")
    parser.add_argument("--milestones", type=_ints, default=[], help="epochs dividing the lr by 10, e.g. 6,9")
    parser.add_argument("--normalize", action="store_true", help="normalise the pixels (default: 0..1, as the papers)")
    parser.add_argument("--output-error", default="modulated", choices=["modulated", "first"])
    parser.add_argument("--mirror-lr", type=float, default=0.1, help="weight mirroring step (default: %(default)s)")
    parser.add_argument("--pre-mirror-epochs", type=int, default=0, help="mirroring-only epochs (default: 0)")
    parser.add_argument("--alignment-every", type=int, default=25, help="steps between BP-angle probes")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: %(default)s)")
    parser.add_argument(
        "--seeds", type=_ints, default=[0], help="comma-separated seeds of the accuracy runs (default: 0)"
    )
    parser.add_argument("--limit", type=int, default=None, help="digits per split (smoke runs)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (default: %(default)s)")
    parser.add_argument("--timing-steps", type=int, default=30, help="timed steps per method and round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default: 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit code."""
    start = time.perf_counter()
    args = build_parser().parse_args(argv)
    args.seed = args.seeds[0]
    args.accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    raw = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python benchmarks/pepita.py", *(shlex.quote(a) for a in raw)])
    if args.accelerator == "cpu":
        torch.set_num_threads(args.threads)
    with quiet_lightning(logging.ERROR, all_warnings=True):
        results = []
        for method in args.methods:
            result = train_and_evaluate(args, method)
            print(
                f"{LABELS[method]}: {', '.join(f'{100 * a:.2f}' for a in result.seed_accuracy)} % after {args.epochs} "
                f"epochs (seed {args.seed} per epoch: {', '.join(f'{100 * a:.2f}' for a in result.epoch_accuracy)}); "
                f"fit {result.fit_s:.0f} s",
                flush=True,
            )
            results.append(result)
        for r in results:
            memory = measure_memory(args, r.method)
            r.real_bytes, r.saved_bytes = memory.real_bytes, memory.saved_bytes
        for _ in range(args.rounds):
            times = {r.method: time_steps(args, r.method) for r in results}
            reference = times.get("bp", next(iter(times.values())))
            for r in results:
                r.step_s.append(times[r.method])
                r.ratios.append(times[r.method] / reference)
    print()
    print(table(results))
    print()
    for line in angle_lines(results):
        print(line)
    print()
    print(f"Command: `{command}`")
    print(f"Machine: {machine_line('cuda' if args.accelerator == 'gpu' else None)}; whole run {time.perf_counter() - start:.0f} s.")
    if args.json is not None:
        payload = {"command": command, "machine": machine_line('cuda' if args.accelerator == 'gpu' else None), "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
