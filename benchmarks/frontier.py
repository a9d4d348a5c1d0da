"""The accuracy-memory-time frontier: back-propagation, activation checkpointing and MPC, trained side by side.

Trains the ``mnist_mlp`` recipe's model (:class:`lightning_mpc.recipes.MLPClassifier`, 8 blocks, width 256)
on the bundled MNIST digits, in one process, with the same seed, epochs and batches for every method:

* back-propagation (Lightning's default strategy);
* back-propagation with activation checkpointing on every block, and on segments of about sqrt(T) blocks
  (``torch.utils.checkpoint.checkpoint(segment, x, use_reentrant=True)`` inside the training step);
* MPC (:class:`lightning_mpc.MPCStrategy`) in ``sliding`` and ``block`` mode for ``h`` in {1, 2, 4, T/2}.

Per method it measures the evaluation accuracy after training, the peak activation memory of a training
step (bytes saved for backward, :class:`lightning_mpc.SavedTensorMeter`, parameters excluded) and the
step time; on CUDA also ``torch.cuda.max_memory_allocated`` over a step. Step times come from a separate
timing phase in which the methods take turns (``--rounds`` rounds of ``--timing-steps`` steps each, on fresh
models), so that drift in a shared machine's speed hits them alike; ratios to back-propagation are taken
within each round. It writes a Markdown page (table, plot, verdicts, the command and the machine) and a
PNG plot, by default ``docs/frontier.md`` and ``docs/img/frontier.png``.

Usage::

    python benchmarks/frontier.py                    # about 3 minutes on 2 CPU cores; rewrites docs/frontier.md
    python benchmarks/frontier.py --epochs 1 --limit 512 --out /tmp/frontier   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_mpc import MPCStrategy
from lightning_mpc.data import EVAL_SIZE, TRAIN_SIZE, BundledMNIST
from lightning_mpc.demo import PeakActivationMemory, StepTimer, quiet_lightning
from lightning_mpc.recipes import MLPClassifier

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
ACCURACY_TOLERANCE = 1.5
"""Accuracy points within which MPC at ``h = T/2`` counts as matching back-propagation."""


# --------------------------------------------------------------------------- methods
class CheckpointedMLP(MLPClassifier):
    """:class:`~lightning_mpc.recipes.MLPClassifier` with reentrant activation checkpointing.

    In training (with gradients enabled) the blocks run in consecutive segments of ``segment`` blocks, each
    under ``torch.utils.checkpoint.checkpoint(segment, x, use_reentrant=True)``: only the segment inputs are
    kept, and each segment is recomputed during the backward. The reentrant variant needs an input that
    requires grad (else block 0's parameters get no gradient), so the flattened batch is made one. It is used
    rather than ``use_reentrant=False`` because its recomputation happens inside the autograd backward, where
    :class:`~lightning_mpc.SavedTensorMeter` sees the tensors it saves; the non-reentrant variant recomputes
    behind saved-tensor hooks of its own, which the meter cannot see, so it would under-report. Gradients
    are exact, as with back-propagation.

    Args:
        num_blocks: blocks ``T`` of the MLP.
        segment: blocks per checkpointed segment (1: every block on its own).
        **kwargs: the other arguments of :class:`~lightning_mpc.recipes.MLPClassifier`.
    """

    def __init__(self, num_blocks: int = 8, segment: int = 1, **kwargs: Any) -> None:
        super().__init__(num_blocks=num_blocks, **kwargs)
        self.segment = segment

    def forward(self, x: Tensor) -> Tensor:
        """Logits; the segments are checkpointed when training with gradients enabled."""
        x = x.flatten(1)
        if not (self.training and torch.is_grad_enabled()):
            return self.net(x)
        x = x.detach().requires_grad_(True)
        blocks = list(self.net)
        for start in range(0, len(blocks), self.segment):
            x = checkpoint(nn.Sequential(*blocks[start : start + self.segment]), x, use_reentrant=True)
        return x


@dataclass(frozen=True)
class Method:
    """One row of the frontier.

    Attributes:
        label: the row's name.
        kind: ``"bp"``, ``"checkpoint"`` or ``"mpc"``.
        mode: the MPC window mode (``None`` otherwise).
        horizon: the MPC horizon (``None`` otherwise).
        segment: blocks per checkpointed segment (``"checkpoint"`` only).
    """

    label: str
    kind: str
    mode: str | None = None
    horizon: int | None = None
    segment: int = 1

    def model(self, num_blocks: int) -> MLPClassifier:
        """A fresh model for this method."""
        if self.kind == "checkpoint":
            return CheckpointedMLP(num_blocks=num_blocks, segment=self.segment)
        return MLPClassifier(num_blocks=num_blocks)

    def strategy(self) -> Any:
        """The Trainer's strategy for this method."""
        if self.kind != "mpc":
            return "auto"
        assert self.horizon is not None and self.mode is not None
        return MPCStrategy(horizon=self.horizon, mode=self.mode, telemetry=False)  # type: ignore[arg-type]


def methods(num_blocks: int, horizons: Sequence[int], modes: Sequence[str]) -> list[Method]:
    """Back-propagation, checkpointing (every block, and segments of about sqrt(T) blocks), then MPC."""
    rows = [Method("BP", "bp"), Method("BP + checkpoint every block", "checkpoint", segment=1)]
    root = max(2, round(math.sqrt(num_blocks)))
    if root < num_blocks:
        rows.append(Method(f"BP + checkpoint every {root} blocks", "checkpoint", segment=root))
    for mode in modes:
        rows += [Method(f"MPC {mode}", "mpc", mode, h) for h in horizons]
    return rows


# --------------------------------------------------------------------------- measuring
class CudaPeakMemory(Callback):
    """Growth of ``torch.cuda.max_memory_allocated`` over a training step, above what was allocated before it.

    Args:
        skip: steps left out first (optimizer state is allocated in the first ones).

    Attributes:
        peaks: one figure per measured step, in bytes.
    """

    def __init__(self, skip: int = 2) -> None:
        self.skip = skip
        self.peaks: list[int] = []
        self._seen = 0
        self._before = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self._before = torch.cuda.memory_allocated()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        torch.cuda.synchronize()
        self._seen += 1
        if self._seen > self.skip:
            self.peaks.append(torch.cuda.max_memory_allocated() - self._before)


@dataclass
class Result:
    """The measurements of one method.

    Attributes:
        method: what was trained.
        accuracy: evaluation accuracy after training, 0..1.
        peak_bytes: peak activation bytes of one training step.
        fit_s: wall time of the training run.
        cuda_bytes: largest step growth of ``torch.cuda.max_memory_allocated`` (CUDA only).
        step_s: median step time of each timing round.
        ratios: step time over back-propagation's, one per timing round.
    """

    method: Method
    accuracy: float
    peak_bytes: int
    fit_s: float
    cuda_bytes: int | None = None
    step_s: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    @property
    def step_ms(self) -> float:
        """Median over rounds of the median step time, in milliseconds."""
        return 1000.0 * statistics.median(self.step_s) if self.step_s else float("nan")

    @property
    def time_ratio(self) -> float:
        """Median over rounds of the step time over back-propagation's in the same round."""
        return statistics.median(self.ratios) if self.ratios else float("nan")


def _trainer(args: argparse.Namespace, method: Method, callbacks: list[Callback], **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        strategy=method.strategy(),
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        deterministic=args.accelerator == "cpu",
        **kwargs,
    )


def train_and_evaluate(args: argparse.Namespace, method: Method) -> Result:
    """Train a fresh model with ``method`` for ``args.epochs`` epochs; measure accuracy and memory."""
    L.seed_everything(args.seed, workers=True, verbose=False)
    datamodule = BundledMNIST(batch_size=args.batch_size, limit=args.limit, shuffle_seed=args.seed)
    model = method.model(args.blocks)
    memory = PeakActivationMemory()
    callbacks: list[Callback] = [memory]
    cuda = CudaPeakMemory() if args.accelerator == "gpu" else None
    if cuda is not None:
        callbacks.append(cuda)
    trainer = _trainer(args, method, callbacks, max_epochs=args.epochs, limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)
    if memory.peak_bytes is None:
        raise RuntimeError(f"{method.label} trained no batch. HINT: raise --limit or lower --batch-size.")
    return Result(
        method=method,
        accuracy=float(metrics[0]["test/acc"]),
        peak_bytes=memory.peak_bytes,
        fit_s=fit_s,
        cuda_bytes=max(cuda.peaks) if cuda is not None and cuda.peaks else None,
    )


def time_steps(args: argparse.Namespace, method: Method) -> float:
    """Median step time (seconds) of ``args.timing_steps`` training steps of a fresh model, warm-up excluded."""
    L.seed_everything(args.seed, workers=True, verbose=False)
    datamodule = BundledMNIST(batch_size=args.batch_size, limit=args.limit, shuffle_seed=args.seed)
    warmup = 3
    timer = StepTimer(skip=warmup)
    trainer = _trainer(args, method, [timer], max_steps=args.timing_steps + warmup, limit_val_batches=0, max_epochs=-1)
    trainer.fit(method.model(args.blocks), datamodule=datamodule)
    return timer.median_ms / 1000.0


# --------------------------------------------------------------------------- reporting
def machine_line(args: argparse.Namespace) -> str:
    """Processor, cores, accelerator, torch version and threads of this run."""
    processor = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        processor = names[0] if names else processor
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU only"
    return (
        f"{processor}, {os.cpu_count()} logical cores, {device}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, lightning {L.__version__}; {torch.get_num_threads()} torch thread(s)"
    )


def table(results: Sequence[Result], num_blocks: int, batch_size: int) -> str:
    """The Markdown results table; ratios are to back-propagation."""
    bp = results[0]
    cuda = any(r.cuda_bytes is not None for r in results)
    header = (
        "| method | h | eval accuracy (%) | peak activation (MiB) | memory / BP | step (ms) | time / BP | samples/s |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if cuda:
        header += " CUDA step peak (MiB) |"
        rule += "---:|"
    lines = [header, rule]
    for r in results:
        horizon = f"{num_blocks} (all)" if r.method.horizon is None else str(r.method.horizon)
        throughput = batch_size / (r.step_ms / 1000.0) if r.step_s else float("nan")
        line = (
            f"| {r.method.label} | {horizon} | {100 * r.accuracy:.2f} | {r.peak_bytes / MIB:.2f} | "
            f"{r.peak_bytes / bp.peak_bytes:.2f} | {r.step_ms:.2f} | {r.time_ratio:.2f} | {throughput:,.0f} |"
        )
        if cuda:
            line += f" {'-' if r.cuda_bytes is None else f'{r.cuda_bytes / MIB:.2f}'} |"
        lines.append(line)
    return "\n".join(lines)


def verdicts(results: Sequence[Result], num_blocks: int) -> list[str]:
    """The acceptance checks: accuracy at ``h = T/2`` against back-propagation, memory falling with ``h``."""
    bp = results[0]
    half = num_blocks // 2
    lines = []
    for mode in dict.fromkeys(r.method.mode for r in results if r.method.mode):
        runs = sorted((r for r in results if r.method.mode == mode), key=lambda r: r.method.horizon or 0)
        match = [r for r in runs if r.method.horizon == half]
        if match:
            gap = 100 * (bp.accuracy - match[0].accuracy)
            ok = abs(gap) <= ACCURACY_TOLERANCE
            lines.append(
                f"- MPC {mode} at h = T/2 = {half} is **{'within' if ok else 'NOT within'}** {ACCURACY_TOLERANCE} "
                f"accuracy points of back-propagation: {100 * match[0].accuracy:.2f} % against "
                f"{100 * bp.accuracy:.2f} % (BP minus MPC: {gap:+.2f} points), at "
                f"{match[0].peak_bytes / bp.peak_bytes:.2f} x its activation memory."
            )
        else:
            lines.append(f"- MPC {mode}: h = T/2 = {half} was not run, so it is not compared with back-propagation.")
        peaks = [r.peak_bytes for r in runs]
        rising = all(a < b for a, b in zip(peaks, peaks[1:]))
        below = all(p < bp.peak_bytes for p, r in zip(peaks, runs) if (r.method.horizon or 0) < num_blocks)
        shown = ", ".join(f"h={r.method.horizon}: {r.peak_bytes / MIB:.2f}" for r in runs)
        lines.append(
            f"- MPC {mode}: activation memory {'falls' if rising else 'does NOT fall'} strictly as h decreases "
            f"and is {'below' if below else 'NOT below'} back-propagation's for every h < T ({shown} MiB; "
            f"BP {bp.peak_bytes / MIB:.2f} MiB)."
        )
    checkpointed = [r for r in results if r.method.kind == "checkpoint"]
    for c in checkpointed:
        lines.append(
            f"- {c.method.label}: {100 * c.accuracy:.2f} % (exact gradients; BP {100 * bp.accuracy:.2f} %) at "
            f"{c.peak_bytes / bp.peak_bytes:.2f} x BP's activation memory and {c.time_ratio:.2f} x its step time."
        )
    if checkpointed:
        floor = min(c.peak_bytes for c in checkpointed)
        lower = [r for r in results if r.method.kind == "mpc" and r.peak_bytes < floor]
        shown = "; ".join(
            f"{r.method.label} h={r.method.horizon}: {r.peak_bytes / bp.peak_bytes:.2f} x, "
            f"{100 * (r.accuracy - bp.accuracy):+.2f} points"
            for r in lower
        )
        lines.append(
            f"- Below checkpointing's least memory ({floor / bp.peak_bytes:.2f} x BP) only MPC goes"
            + (f": {shown} (accuracy against BP)." if lower else "; no MPC row did here.")
        )
    return lines


def write_plot(path: Path, results: Sequence[Result], num_blocks: int) -> None:
    """Accuracy against activation memory, and step time against activation memory, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    markers = iter(("s", "D", "^", "v"))
    styles = {r.method.label: ("tab:gray", next(markers, "x"), 8) for r in results if r.method.kind == "checkpoint"}
    styles[results[0].method.label] = ("black", "*", 14)
    for ax, value, ylabel in (
        (ax_acc, lambda r: 100 * r.accuracy, "evaluation accuracy (%)"),
        (ax_time, lambda r: r.step_ms, "training step (ms)"),
    ):
        for r in results:
            if r.method.label in styles:
                color, marker, size = styles[r.method.label]
                ax.plot(
                    r.peak_bytes / MIB,
                    value(r),
                    marker=marker,
                    color=color,
                    markersize=size,
                    linestyle="",
                    label=r.method.label,
                )
        for mode, color in (("sliding", "tab:blue"), ("block", "tab:orange")):
            runs = sorted((r for r in results if r.method.mode == mode), key=lambda r: r.method.horizon or 0)
            if not runs:
                continue
            xs, ys = [r.peak_bytes / MIB for r in runs], [value(r) for r in runs]
            ax.plot(xs, ys, marker="o", color=color, label=f"MPC {mode}")
            for r, x, y in zip(runs, xs, ys):
                ax.annotate(
                    f"h={r.method.horizon}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=color
                )
        ax.set_xlabel("peak activation memory of a training step (MiB saved for backward)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    ax_acc.set_title(f"Accuracy against memory ({num_blocks}-block MLP, bundled MNIST)")
    ax_time.set_title("Step time against memory")
    ax_acc.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_page(
    path: Path, plot: Path, results: Sequence[Result], args: argparse.Namespace, command: str, total_s: float
) -> str:
    """Write the Markdown page and return its table."""
    text_table = table(results, args.blocks, args.batch_size)
    train = min(TRAIN_SIZE, args.limit or TRAIN_SIZE)
    evaluation = min(EVAL_SIZE, args.limit or EVAL_SIZE)
    smoke = " **Smoke run: `--limit` cut both splits; the figures mean nothing.**" if args.limit else ""
    image = os.path.relpath(plot, path.parent)
    half = args.blocks // 2
    lines = [
        "<!-- Generated by benchmarks/frontier.py; edit the script, not this page. -->",
        "# The accuracy-memory frontier",
        "",
        "What does the horizon buy? The same model, data, seed, epochs and batches, trained with "
        "back-propagation, with back-propagation and activation checkpointing (on every block, and on segments of "
        f"about sqrt(T) blocks), and with MPC in both window modes at h in "
        f"{{{', '.join(str(h) for h in args.horizons)}}} (T = {args.blocks} blocks, so "
        f"T/2 = {half}), measured side by side in one process.{smoke}",
        "",
        f"![Accuracy and step time against activation memory]({image})",
        "",
        text_table,
        "",
        "## Verdicts",
        "",
        *verdicts(results, args.blocks),
        "",
        "## How to read it",
        "",
        "- **Peak activation**: the most bytes autograd held for backward during one training step (forward, "
        "every window backward and the final backward), parameters excluded, measured by `SavedTensorMeter` "
        "on the first step. This is the memory that scales with batch size and depth; it is device-independent "
        "and deterministic. Checkpointing uses `use_reentrant=True` (with an input that requires grad) so that "
        "its recomputation during the backward is inside the measurement; the non-reentrant variant recomputes "
        "behind its own saved-tensor hooks, which the meter cannot see.",
        "- **Step time**: a separate timing phase in which the methods take turns on fresh models "
        f"({args.rounds} round(s) of {args.timing_steps} steps after 3 warm-up steps each); **time / BP** is the "
        "median over rounds of the step time over back-propagation's in the same round, which cancels most of "
        "the drift of a shared machine. A step includes the optimizer update. **samples/s** is the batch size "
        "over the step time.",
        "- MPC `sliding` carries every local loss back through h blocks (about (h + 2) / 3 times "
        "back-propagation's backward work) and `block` through its own window only; both keep only about h "
        "blocks' activations alive. Checkpointing keeps the input of every checkpointed segment and recomputes "
        "each segment once during the backward.",
        "- In this MLP a block (`Linear + ReLU`) saves only its input and its output, which is the next block's "
        "input: every activation sits on a block boundary. Checkpointing every block therefore keeps exactly what "
        "back-propagation keeps and saves nothing; checkpointing segments of about sqrt(T) blocks keeps only the "
        "segment inputs plus one segment. MPC frees the boundaries themselves once their windows have closed. "
        "In networks whose blocks hold many internal activations (a ResNet's convolutions, normalisations and "
        "activations) per-block checkpointing saves much more (see [Memory and time](benchmarks.md)).",
        "- On this small MLP every block holds a similar share of the activations, so memory falls about "
        "linearly with h. A ResNet's stem holds a large share, which bounds the saving "
        "(see [Memory and time](benchmarks.md)).",
        "",
        "## Setup",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_line(args)}.",
        f"- Data: the bundled MNIST digits (`lightning_mpc/data/mnist10k.npz`); train on the first {train:,}, "
        f"evaluate on {evaluation:,} of the last 2,000 (indices 8000..{8000 + evaluation - 1}).",
        f"- Model: `MLPClassifier(num_blocks={args.blocks})` of the `mnist_mlp` recipe (width 256, Adam, lr 1e-3), "
        f"batch size {args.batch_size}, {args.epochs} epoch(s), seed {args.seed}; MPC adds a linear local head "
        "per block but the last. Every run starts from the same weights and sees the same batches.",
        f"- Wall time of the whole benchmark: {total_s:.0f} s.",
        *([f"- Note: {args.note}"] if args.note else []),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return text_table


# --------------------------------------------------------------------------- entry point
def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"horizons must be integers >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(prog="python benchmarks/frontier.py", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per method (default: %(default)s)")
    parser.add_argument("--blocks", type=int, default=8, help="blocks T of the MLP (default: %(default)s)")
    parser.add_argument(
        "--horizons", type=_int_list, default=None, help="comma-separated MPC horizons (default: 1,2,4 and T/2)"
    )
    parser.add_argument("--modes", default="sliding,block", help="comma-separated MPC modes (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="digits per split (smoke runs)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (default: %(default)s)")
    parser.add_argument("--timing-steps", type=int, default=20, help="timed steps per method and round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default: 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder of frontier.md (default: docs/)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: <out>/img/frontier.png)")
    parser.add_argument("--note", default="", help="a line about the machine or run, added to the page's setup")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    start = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("sliding", "block") for m in args.modes) or args.blocks < 2 or args.epochs < 1:
        parser.error("modes must be sliding and/or block, --blocks at least 2 and --epochs at least 1")
    if args.horizons is None:
        args.horizons = sorted({1, 2, 4, args.blocks // 2} - {0})
    args.accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    plot = args.plot or args.out / "img" / "frontier.png"
    raw = list(sys.argv[1:] if argv is None else argv)
    shown = [a for i, a in enumerate(raw) if not (a.startswith("--note") or (i and raw[i - 1] == "--note"))]
    command = " ".join(["python benchmarks/frontier.py", *(shlex.quote(a) for a in shown)])
    previous = torch.get_num_threads()
    if args.accelerator == "cpu":
        torch.set_num_threads(args.threads)
    try:
        with quiet_lightning(logging.ERROR, all_warnings=True):
            rows = methods(args.blocks, args.horizons, args.modes)
            results = []
            for index, method in enumerate(rows, start=1):
                result = train_and_evaluate(args, method)
                results.append(result)
                print(
                    f"[{index}/{len(rows)}] {method.label} h={method.horizon or 'T'}: accuracy "
                    f"{100 * result.accuracy:.2f} %, peak activation {result.peak_bytes / MIB:.2f} MiB, "
                    f"trained in {result.fit_s:.1f} s",
                    flush=True,
                )
            for round_index in range(args.rounds):
                times = [time_steps(args, method) for method in rows]
                for result, seconds in zip(results, times):
                    result.step_s.append(seconds)
                    result.ratios.append(seconds / times[0])
                print(f"timing round {round_index + 1}/{args.rounds} done", flush=True)
            write_plot(plot, results, args.blocks)
            text_table = write_page(args.out / "frontier.md", plot, results, args, command, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    print()
    print(text_table)
    print()
    print("\n".join(verdicts(results, args.blocks)))
    print(f"\nWrote {args.out / 'frontier.md'} and {plot} in {time.perf_counter() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
