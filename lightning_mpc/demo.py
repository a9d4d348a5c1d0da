"""Side-by-side demo: back-propagation against MPC (horizon-truncated) training on the bundled MNIST digits.

Run::

    python -m lightning_mpc.demo --out reports/demo

It trains the same 8-block MLP (same seed, same epochs, same batches, a fresh model per run) with plain
back-propagation (Lightning's default strategy) and with :class:`~lightning_mpc.MPCStrategy` at each
requested horizon and mode, then writes ``report.md`` (a table of evaluation accuracy, peak activation
memory of one training step and median step time, each also as a ratio to back-propagation measured in
the same process) and ``report.png`` into ``--out``, and prints the table. Each run also logs to a
``CSVLogger`` under ``--out/logs``. One more MPC run (horizon ``T/2`` when requested), with its per-block
telemetry on and outside the measured table, gives ``--out/dashboard/report.html`` and
``dashboard-mpc.png``: what ``lightning-mpc report`` draws (loss, memory, alignment and time per block).

The split is fixed: the first 8,000 bundled digits train, the last 2,000 evaluate (see
``lightning_mpc/data/README.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from lightning_mpc.core.memory import SavedTensorMeter
from lightning_mpc.core.schedule import MODES
from lightning_mpc.data import EVAL_SIZE, TRAIN_SIZE, BundledMNIST
from lightning_mpc.lightning import MPCStrategy, MPCTelemetry
from lightning_mpc.recipes.models import MLPClassifier
from lightning_mpc.report import Report
from lightning_mpc.report import write_report as write_run_report

__all__ = [
    "DemoMLP",
    "PeakActivationMemory",
    "RunResult",
    "StepTimer",
    "build_parser",
    "main",
    "quiet_lightning",
    "run_dashboard",
    "run_one",
    "write_plot",
    "write_report",
]

NUM_BLOCKS = 8
"""Blocks of the demo MLP; ``T / 2 = 4`` is the horizon compared with back-propagation."""
_ACCURACY_TOLERANCE = 1.5
"""Accuracy points within which MPC at ``h = T/2`` counts as matching back-propagation."""
_MIB = 2**20


# --------------------------------------------------------------------------- model
DemoMLP = MLPClassifier
"""The demo's model: the ``mnist_mlp`` recipe's :class:`~lightning_mpc.recipes.MLPClassifier` (8 blocks of
``Linear + ReLU`` / ``Linear``, width 256, Adam with lr 1e-3), the same class ``lightning-mpc fit --config
recipes/mnist_mlp.yaml`` trains."""


# ----------------------------------------------------------------------- callbacks
class PeakActivationMemory(Callback):
    """Peak bytes saved for backward (activation memory) during one training step.

    Wraps the first training batch in a :class:`~lightning_mpc.SavedTensorMeter` (parameters
    excluded): the meter is entered in ``on_train_batch_start`` and left in ``on_train_batch_end``, so it
    sees the forward, every window backward MPC runs inside ``training_step`` and Lightning's backward
    of the returned loss.

    Attributes:
        peak_bytes: the measured peak, ``None`` until the first batch has ended.
    """

    def __init__(self) -> None:
        self.peak_bytes: int | None = None
        self._meter: SavedTensorMeter | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.peak_bytes is None and self._meter is None:
            self._meter = SavedTensorMeter(exclude=pl_module.parameters())
            self._meter.__enter__()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._meter is not None:
            self._meter.__exit__(None, None, None)
            self.peak_bytes = self._meter.peak_bytes
            self._meter = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._meter is not None:
            self._meter.__exit__(type(exception), exception, exception.__traceback__)
            self._meter = None


class StepTimer(Callback):
    """Wall time of each training step, ``on_train_batch_start`` to ``on_train_batch_end``.

    Args:
        skip: warm-up batches left out of :attr:`median_ms` (the first one also carries the memory meter).

    Attributes:
        times_s: every measured step, in seconds, warm-up included.
    """

    def __init__(self, skip: int = 5) -> None:
        self.skip = skip
        self.times_s: list[float] = []
        self._start: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is not None:
            self.times_s.append(time.perf_counter() - self._start)
            self._start = None

    @property
    def median_ms(self) -> float:
        """Median step time in milliseconds after the warm-up (fewer skipped on tiny runs; NaN if none)."""
        if not self.times_s:
            return float("nan")
        skip = min(self.skip, len(self.times_s) - 1)
        return 1000.0 * statistics.median(self.times_s[skip:])


def _progress_bar() -> ProgressBar:
    """Rich when attached to a terminal, otherwise TQDM with sparse refreshes (readable in logs)."""
    if sys.stdout.isatty() and sys.stderr.isatty():
        return RichProgressBar(leave=True)
    return TQDMProgressBar(refresh_rate=20)


# --------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    """The figures of one training run.

    Attributes:
        method: ``"BP"`` or ``"MPC (<mode>)"``.
        mode: ``None`` for back-propagation, else the MPC window mode.
        horizon: ``None`` for back-propagation, else ``h``.
        accuracy: final accuracy on the evaluation split, 0..1.
        peak_bytes: peak activation bytes of the first training step.
        step_ms: median training step time in milliseconds.
        fit_s: wall time of ``Trainer.fit``.
    """

    method: str
    mode: str | None
    horizon: int | None
    accuracy: float
    peak_bytes: int
    step_ms: float
    fit_s: float


def run_one(
    horizon: int | None,
    mode: str,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    limit: int | None,
    out: Path,
) -> RunResult:
    """Train a fresh :class:`DemoMLP` and measure it.

    Args:
        horizon: ``None`` for plain back-propagation (Lightning's default strategy), else the MPC horizon.
        mode: MPC window mode (ignored for back-propagation).
        epochs: training epochs.
        batch_size: batch size.
        seed: passed to ``L.seed_everything`` before the model is built (same initial weights every run).
        limit: digits per split for smoke runs, ``None`` for all.
        out: output folder; the run's CSV logs go to ``out/logs/<run name>``.

    Returns:
        The run's figures.
    """
    name = "bp" if horizon is None else f"mpc_{mode}_h{horizon}"
    method = "BP" if horizon is None else f"MPC ({mode})"
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = BundledMNIST(batch_size=batch_size, limit=limit, shuffle_seed=seed)
    model = DemoMLP()
    memory = PeakActivationMemory()
    timer = StepTimer()
    strategy = "auto" if horizon is None else MPCStrategy(horizon=horizon, mode=mode, telemetry=False)  # type: ignore[arg-type]
    batches = _batches(limit, batch_size)
    trainer = _trainer(strategy, [memory, timer], name=name, epochs=epochs, batches=batches, out=out)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)
    if memory.peak_bytes is None:
        raise RuntimeError(f"Run {name} trained no batch, so no activation memory was measured.")
    return RunResult(
        method=method,
        mode=None if horizon is None else mode,
        horizon=horizon,
        accuracy=float(metrics[0]["test/acc"]),
        peak_bytes=memory.peak_bytes,
        step_ms=timer.median_ms,
        fit_s=fit_s,
    )


def _batches(limit: int | None, batch_size: int) -> int:
    return -(-min(TRAIN_SIZE, limit or TRAIN_SIZE) // batch_size)


def _trainer(strategy: Any, callbacks: list[Callback], *, name: str, epochs: int, batches: int, out: Path) -> L.Trainer:
    """The demo's Trainer: CPU, one device, CSV logs in ``out/logs/<name>``, logged every 10 steps (or fewer)."""
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        max_epochs=epochs,
        logger=CSVLogger(save_dir=str(out), name="logs", version=name),
        callbacks=[_progress_bar(), *callbacks],
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(10, batches)),
        deterministic=True,
    )


def run_dashboard(
    horizon: int, mode: str, *, epochs: int, batch_size: int, seed: int, limit: int | None, out: Path
) -> Report:
    """Train the MPC run once more with its per-block telemetry on, and draw its report into ``out/dashboard``.

    Kept apart from the measured runs: telemetry times every block on the steps it logs and counts saved
    tensors with hooks that a second meter cannot share, so the table's figures come from runs without it.

    Returns:
        The report (``out/dashboard/report.html`` and ``dashboard-mpc.png``).
    """
    name = f"mpc_{mode}_h{horizon}_telemetry"
    L.seed_everything(seed, workers=True, verbose=False)
    batches = _batches(limit, batch_size)
    telemetry = MPCTelemetry(alignment_every=2 * max(1, min(10, batches)))
    strategy = MPCStrategy(horizon=horizon, mode=mode, telemetry=telemetry)  # type: ignore[arg-type]
    trainer = _trainer(strategy, [], name=name, epochs=epochs, batches=batches, out=out)
    trainer.fit(DemoMLP(), datamodule=BundledMNIST(batch_size=batch_size, limit=limit, shuffle_seed=seed))
    title = (
        f"Per-block telemetry: {NUM_BLOCKS}-block MLP, bundled MNIST, MPCStrategy(horizon={horizon}, mode={mode!r}), "
        f"{epochs} epoch(s)"
    )
    return write_run_report(out / "logs" / name, out / "dashboard", title=title)


# ------------------------------------------------------------------------- report
def _table(results: Sequence[RunResult]) -> str:
    bp = results[0]
    lines = [
        "| method | horizon | eval accuracy (%) | peak activation (MiB) | memory / BP | step (ms) | time / BP |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        horizon = f"{NUM_BLOCKS} (all)" if r.horizon is None else str(r.horizon)
        lines.append(
            f"| {r.method} | {horizon} | {100 * r.accuracy:.2f} | {r.peak_bytes / _MIB:.2f} | "
            f"{r.peak_bytes / bp.peak_bytes:.2f} | {r.step_ms:.2f} | {r.step_ms / bp.step_ms:.2f} |"
        )
    return "\n".join(lines)


def _accuracy_verdicts(results: Sequence[RunResult], modes: Sequence[str]) -> list[str]:
    bp = results[0]
    half = NUM_BLOCKS // 2
    verdicts = []
    for mode in modes:
        match = [r for r in results if r.mode == mode and r.horizon == half]
        if not match:
            verdicts.append(
                f"- MPC ({mode}) at h = T/2 = {half} was not run (horizons given: "
                f"{', '.join(str(r.horizon) for r in results if r.mode == mode)}), so it is not compared with BP."
            )
            continue
        gap = 100 * (bp.accuracy - match[0].accuracy)
        within = abs(gap) <= _ACCURACY_TOLERANCE
        verdicts.append(
            f"- BP and MPC ({mode}) at h = T/2 = {half} are **{'within' if within else 'NOT within'}** "
            f"{_ACCURACY_TOLERANCE} accuracy points: {100 * bp.accuracy:.2f} % against "
            f"{100 * match[0].accuracy:.2f} % (BP minus MPC: {gap:+.2f} points)."
        )
    return verdicts


def write_report(
    path: Path,
    results: Sequence[RunResult],
    *,
    args: argparse.Namespace,
    command: str,
    total_s: float,
    dashboard: Report | None = None,
) -> str:
    """Write ``report.md`` and return its table.

    Args:
        path: the Markdown file to write.
        results: back-propagation first, then the MPC runs.
        args: the parsed command line.
        command: the command line, for reproduction.
        total_s: wall time of the whole demo so far.
        dashboard: the per-block report of the telemetry run, linked from the page when given.
    """
    table = _table(results)
    per_block: list[str] = []
    if dashboard is not None:

        def link(file: Path) -> str:
            return file.relative_to(path.parent).as_posix()

        per_block = [
            "## Per-block telemetry",
            "",
            (
                f"One more MPC run with `MPCTelemetry` on, logged to `{link(dashboard.run.folder)}` (not part of "
                "the table above): the local loss of each block's head, the activation bytes each window holds "
                "against back-propagation, the cosine of each block's update with the true gradient, and the time "
                f"per block. [{link(dashboard.html)}]({link(dashboard.html)}) is the same as one self-contained "
                "page; `lightning-mpc report` draws it from any run."
            ),
            "",
            *(f"![Per-block telemetry, {prefix}]({link(png)})" for prefix, png in dashboard.figures.items()),
            "",
        ]
    train = min(TRAIN_SIZE, args.limit or TRAIN_SIZE)
    evaluation = min(EVAL_SIZE, args.limit or EVAL_SIZE)
    limited = " (**smoke run**: --limit cut both splits)" if args.limit else ""
    text = "\n".join(
        [
            "# lightning-mpc demo: back-propagation against MPC on the bundled MNIST digits",
            "",
            table,
            "",
            "## Accuracy check",
            "",
            *_accuracy_verdicts(results, args.modes),
            "",
            *per_block,
            "## Setup",
            "",
            f"- Command: `{command}`",
            f"- Data: the bundled `lightning_mpc/data/mnist10k.npz` (10,000 real MNIST digits, see its README); "
            f"train on the first {train:,} digits (indices 0..{train - 1}), evaluate on "
            f"{'the last 2,000' if evaluation == EVAL_SIZE else f'the first {evaluation:,} of the last 2,000'} "
            f"(indices 8000..{8000 + evaluation - 1}){limited}. Normalised with mean 0.1307, std 0.3081.",
            f"- Model: {NUM_BLOCKS}-block MLP (7 x `Linear + ReLU`, width 256, then `Linear(256, 10)`); "
            f"MPC adds one linear local head per block but the last. Adam, lr 1e-3, batch size {args.batch_size}, "
            f"{args.epochs} epoch(s), seed {args.seed}; every run starts from the same weights and sees the same "
            "batches.",
            "- BP is Lightning's default strategy (exact back-propagation, no heads). MPC is "
            "`MPCStrategy(horizon=h, mode=...)`: in `sliding` mode block k learns from the loss at depth "
            "min(k + h, T); in `block` mode non-overlapping windows of h blocks learn from the loss at their end; "
            f"h >= T = {NUM_BLOCKS} would be exact back-propagation.",
            "- Eval accuracy: torchmetrics `MulticlassAccuracy` on the evaluation split after the last epoch.",
            "- Peak activation: bytes of tensors saved for backward (parameters excluded, `SavedTensorMeter`), "
            "peak over the first training step, forward and every backward included.",
            "- Step time: median wall time from `on_train_batch_start` to `on_train_batch_end`, first 5 batches "
            f"skipped, {torch.get_num_threads()} torch thread(s), CPU. Ratios are to BP measured in the same process.",
            f"- Total demo wall time (training, evaluation and report, after Python imports): {total_s:.1f} s.",
            "",
        ]
    )
    path.write_text(text, encoding="utf-8")
    return table


def write_plot(path: Path, results: Sequence[RunResult]) -> None:
    """Write ``report.png``: accuracy and peak activation memory against the horizon, BP as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bp = results[0]
    fig, (ax_acc, ax_mem) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    modes = sorted({r.mode for r in results if r.mode is not None})
    horizons = sorted({r.horizon for r in results if r.horizon is not None})
    for mode in modes:
        runs = sorted((r for r in results if r.mode == mode), key=lambda r: r.horizon or 0)
        xs = [r.horizon for r in runs]
        ax_acc.plot(xs, [100 * r.accuracy for r in runs], marker="o", label=f"MPC ({mode})")
        ax_mem.plot(xs, [r.peak_bytes / _MIB for r in runs], marker="o", label=f"MPC ({mode})")
    ax_acc.axhline(100 * bp.accuracy, color="black", linestyle="--", label="BP")
    ax_mem.axhline(bp.peak_bytes / _MIB, color="black", linestyle="--", label="BP")
    for ax, title, ylabel in (
        (ax_acc, "Evaluation accuracy", "accuracy on held-out digits (%)"),
        (ax_mem, "Peak activation memory, one step", "MiB saved for backward"),
    ):
        ax.set_title(title)
        ax.set_xlabel(f"horizon h (T = {NUM_BLOCKS} blocks)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(horizons)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_mem.set_ylim(bottom=0)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- CLI
def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"horizons must be integers >= 1, got {text!r}")
    return sorted(set(values))


def _mode_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    bad = [v for v in values if v not in MODES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"modes must be among {', '.join(MODES)}, got {text!r}")
    return list(dict.fromkeys(values))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The demo's command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_mpc.demo",
        description="Train an 8-block MLP on the bundled MNIST digits with back-propagation and with MPC at "
        "several horizons; write report.md and report.png.",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/demo"), help="output folder (default: %(default)s)")
    parser.add_argument("--epochs", type=_positive, default=5, help="training epochs per run (default: %(default)s)")
    parser.add_argument(
        "--horizons", type=_int_list, default=[1, 2, 4], help="comma-separated MPC horizons (default: 1,2,4)"
    )
    parser.add_argument(
        "--modes",
        type=_mode_list,
        default=["sliding"],
        help="comma-separated MPC modes: sliding, block (default: sliding)",
    )
    parser.add_argument("--batch-size", type=_positive, default=128, help="batch size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--limit", type=_positive, default=None, help="use only this many digits per split (smoke runs)"
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="torch intra-op CPU threads (default: 1; the demo's 256-wide matrix products are too small to gain "
        "from more, and on a small shared machine extra threads cost more in synchronisation than they save)",
    )
    return parser


@contextlib.contextmanager
def quiet_lightning(level: int = logging.WARNING, all_warnings: bool = False) -> Iterator[None]:
    """Keep the console to progress bars and results; restores warnings and log levels on exit.

    Args:
        level: the least level Lightning's loggers still print.
        all_warnings: silence every warning, not only the known harmless ones of these runs.
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for logger in loggers:
            logger.setLevel(level)
        if all_warnings:
            warnings.simplefilter("ignore")
        else:
            _ignore_known_warnings()
        try:
            yield
        finally:
            for logger, previous in zip(loggers, levels):
                logger.setLevel(previous)


def _ignore_known_warnings() -> None:
    for message in (
        r".*does not have many workers.*",
        r".*GPU available but not used.*",
        r".*smaller than the logging interval.*",
        r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo.

    Args:
        argv: command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code, 0 on success.
    """
    start = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    raw = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m lightning_mpc.demo", *(shlex.quote(a) for a in raw)])

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or 1)
    try:
        with quiet_lightning():
            return _run(args, command, start)
    finally:
        torch.set_num_threads(previous_threads)


def _run(args: argparse.Namespace, command: str, start: float) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    common = dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, limit=args.limit, out=out)
    results = [run_one(None, "sliding", **common)]  # type: ignore[arg-type]
    for mode in args.modes:
        for horizon in args.horizons:
            results.append(run_one(horizon, mode, **common))  # type: ignore[arg-type]

    half = NUM_BLOCKS // 2
    dashboard = run_dashboard(
        half if half in args.horizons else max(args.horizons),
        args.modes[0],
        **common,  # type: ignore[arg-type]
    )
    write_plot(out / "report.png", results)
    table = write_report(
        out / "report.md",
        results,
        args=args,
        command=command,
        total_s=time.perf_counter() - start,
        dashboard=dashboard,
    )
    (out / "results.csv").write_text(
        "\n".join(
            [",".join(RunResult.__dataclass_fields__)]
            + [",".join("" if v is None else str(v) for v in asdict(r).values()) for r in results]
        )
        + "\n",
        encoding="utf-8",
    )
    print()
    print(table)
    print()
    for line in _accuracy_verdicts(results, args.modes):
        print(line)
    wrote = f"{out / 'report.md'}, {out / 'report.png'} and {dashboard.html}"
    print(f"\nWrote {wrote} in {time.perf_counter() - start:.1f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
