"""Side-by-side demo: back-propagation against MPC (horizon-truncated) training on the bundled MNIST digits.

Run::

    python -m lightning_mpc.demo --out reports/demo

It trains the same 8-block MLP (same seed, same epochs, same batches, a fresh model per run) with plain
back-propagation (Lightning's default strategy) and with :class:`~lightning_mpc.MPCStrategy` at each
requested horizon and mode, then times them in interleaved rounds, and writes ``report.md`` (a table of
evaluation accuracy, the real memory of one training step and the step time, each also as a ratio to
back-propagation measured in the same process) and ``report.png`` into ``--out``, and prints the table.
Each run also logs to a ``CSVLogger`` under ``--out/logs``. One more MPC run (horizon ``T/2`` when
requested), with its per-block telemetry on and outside the measured table, gives
``--out/dashboard/report.html`` and ``dashboard-mpc.png``: what ``lightning-mpc report`` draws (loss,
memory, alignment and time per block).

The measurements come from the shared benchmark harness (:mod:`lightning_mpc.bench`). The split is fixed:
the first 8,000 bundled digits train, the last 2,000 evaluate (see ``lightning_mpc/data/README.md``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from lightning_mpc.bench.arguments import horizon_list, mode_list, positive_int
from lightning_mpc.bench.machine import machine_line
from lightning_mpc.bench.methods import Method, backprop_method, mpc_method
from lightning_mpc.bench.quiet import quiet_lightning
from lightning_mpc.bench.results import accuracy_verdicts, results_table
from lightning_mpc.bench.table import MIB
from lightning_mpc.bench.timing import Timings
from lightning_mpc.bench.training import MethodResult, TrainingSetup, bench_trainer, time_methods, train_and_measure
from lightning_mpc.data import EVAL_SIZE, TRAIN_SIZE
from lightning_mpc.lightning import MPCStrategy, MPCTelemetry
from lightning_mpc.recipes.models import MLPClassifier
from lightning_mpc.report import Report
from lightning_mpc.report import write_report as write_run_report

__all__ = ["DemoMLP", "build_parser", "demo_methods", "main", "run_dashboard", "write_plot", "write_report"]

NUM_BLOCKS = 8
"""Blocks of the demo MLP; ``T / 2 = 4`` is the horizon compared with back-propagation."""

DemoMLP = MLPClassifier
"""The demo's model: the ``mnist_mlp`` recipe's :class:`~lightning_mpc.recipes.MLPClassifier` (8 blocks of
``Linear + ReLU`` / ``Linear``, width 256, Adam with lr 1e-3), the same class ``lightning-mpc fit --config
recipes/mnist_mlp.yaml`` trains."""


def _progress_bar() -> ProgressBar:
    """Rich when attached to a terminal, otherwise TQDM with sparse refreshes (readable in logs)."""
    if sys.stdout.isatty() and sys.stderr.isatty():
        return RichProgressBar(leave=True)
    return TQDMProgressBar(refresh_rate=20)


def demo_methods(horizons: Sequence[int], modes: Sequence[str]) -> list[Method]:
    """Back-propagation first, then MPC at every horizon of every mode."""
    return [backprop_method(), *(mpc_method(h, mode) for mode in modes for h in horizons)]


def _run_name(method: Method) -> str:
    return "bp" if method.family == "bp" else f"mpc_{method.mode}_h{method.horizon}"


def _trained(method: Method, setup: TrainingSetup, out: Path) -> MethodResult:
    """Train one method with CSV logs in ``out/logs/<run name>`` and a progress bar."""
    logger = CSVLogger(save_dir=str(out), name="logs", version=_run_name(method))
    return train_and_measure(
        method,
        setup,
        callbacks=[_progress_bar()],
        logger=logger,
        enable_progress_bar=True,
        log_every_n_steps=max(1, min(10, setup.batches_per_epoch)),
    )


def run_dashboard(horizon: int, mode: str, setup: TrainingSetup, out: Path) -> Report:
    """Train the MPC run once more with its per-block telemetry on, and draw its report into ``out/dashboard``.

    Kept apart from the measured runs: telemetry measures memory and time on the steps it logs, which the
    table's figures must not include.

    Returns:
        The report (``out/dashboard/report.html`` and ``dashboard-mpc.png``).
    """
    import lightning as L

    name = f"mpc_{mode}_h{horizon}_telemetry"
    L.seed_everything(setup.seed, workers=True, verbose=False)
    every = max(1, min(10, setup.batches_per_epoch))
    telemetry = MPCTelemetry(alignment_every=2 * every)
    strategy = MPCStrategy(horizon=horizon, mode=mode, telemetry=telemetry)  # type: ignore[arg-type]
    logger = CSVLogger(save_dir=str(out), name="logs", version=name)
    trainer = bench_trainer(
        setup, strategy, [_progress_bar()], logger=logger, enable_progress_bar=True, log_every_n_steps=every
    )
    trainer.fit(DemoMLP(num_blocks=setup.num_blocks), datamodule=setup.datamodule())
    title = (
        f"Per-block telemetry: {NUM_BLOCKS}-block MLP, bundled MNIST, MPCStrategy(horizon={horizon}, mode={mode!r}), "
        f"{setup.epochs} epoch(s)"
    )
    return write_run_report(out / "logs" / name, out / "dashboard", title=title)


# ------------------------------------------------------------------------- report
def write_report(
    path: Path,
    results: Sequence[MethodResult],
    timings: Timings,
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
        timings: the interleaved timing rounds of the same methods.
        args: the parsed command line.
        command: the command line, for reproduction.
        total_s: wall time of the whole demo so far.
        dashboard: the per-block report of the telemetry run, linked from the page when given.
    """
    table = results_table(results, timings, NUM_BLOCKS).render(markdown=True)
    per_block: list[str] = []
    if dashboard is not None:

        def link(file: Path) -> str:
            return file.relative_to(path.parent).as_posix()

        per_block = [
            "## Per-block telemetry",
            "",
            (
                f"One more MPC run with `MPCTelemetry` on, logged to `{link(dashboard.run.folder)}` (not part of "
                "the table above): the local loss of each block's head, the real memory each block's window holds "
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
    allocator = results[0].memory_method or "real allocator bytes"
    text = "\n".join(
        [
            "# lightning-mpc demo: back-propagation against MPC on the bundled MNIST digits",
            "",
            table,
            "",
            timings.noise_note(),
            "",
            "## Accuracy check",
            "",
            *accuracy_verdicts(results, NUM_BLOCKS),
            "",
            *per_block,
            "## Setup",
            "",
            f"- Command: `{command}`",
            f"- Machine: {machine_line()}.",
            (
                f"- Data: the bundled `lightning_mpc/data/mnist10k.npz` (10,000 real MNIST digits, see its README); "
                f"train on the first {train:,} digits (indices 0..{train - 1}), evaluate on "
                f"{'the last 2,000' if evaluation == EVAL_SIZE else f'the first {evaluation:,} of the last 2,000'} "
                f"(indices 8000..{8000 + evaluation - 1}){limited}. Normalised with mean 0.1307, std 0.3081."
            ),
            (
                f"- Model: {NUM_BLOCKS}-block MLP (7 x `Linear + ReLU`, width 256, then `Linear(256, 10)`); "
                f"MPC adds one linear local head per block but the last. Adam, lr 1e-3, batch size {args.batch_size}, "
                f"{args.epochs} epoch(s), seed {args.seed}; every run starts from the same weights and sees the same "
                "batches."
            ),
            (
                "- BP is Lightning's default strategy (exact back-propagation, no heads). MPC is "
                "`MPCStrategy(horizon=h, mode=...)`: in `sliding` mode block k learns from the loss at depth "
                "min(k + h, T); in `block` mode non-overlapping windows of h blocks learn from the loss at their end; "
                f"h >= T = {NUM_BLOCKS} would be exact back-propagation."
            ),
            "- Eval accuracy: torchmetrics `MulticlassAccuracy` on the evaluation split after the last epoch.",
            (
                f"- Real peak: the most bytes the allocator held at once during the second training step, above what "
                f"was allocated before it (`lightning_mpc.bench.StepMemory`, {allocator}): the forward, every "
                "backward and the local heads, up to the optimizer's update. Gradients are allocated beforehand and "
                "zeroed in place (`zero_grad(set_to_none=False)`), so no step pays for allocating `.grad`; in this "
                "small MLP one weight gradient's temporary (784 x 256 floats) is a large share of every row."
            ),
            (
                f"- Step time: a separate timing phase in which the methods take turns on fresh models ({args.rounds} "
                f"rounds of {args.timing_steps} steps after 3 warm-up steps each; a step includes the optimizer "
                "update). "
                "**time / BP** is the median over rounds of the step time over BP's in the same round, with the "
                "interquartile range over rounds in brackets; a run whose BP rounds vary by more than 1.5x is flagged. "
                "Ratios are to BP measured in the same process."
            ),
            f"- Total demo wall time (training, timing, evaluation and report, after Python imports): {total_s:.1f} s.",
            "",
        ]
    )
    path.write_text(text, encoding="utf-8")
    return table


def write_plot(path: Path, results: Sequence[MethodResult]) -> None:
    """Write ``report.png``: accuracy and real memory against the horizon, BP as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bp = results[0]
    fig, (ax_acc, ax_mem) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    modes = sorted({r.method.mode for r in results if r.method.mode is not None})
    horizons = sorted({r.method.horizon for r in results if r.method.horizon is not None})
    for mode in modes:
        runs = sorted((r for r in results if r.method.mode == mode), key=lambda r: r.method.horizon or 0)
        xs = [r.method.horizon for r in runs]
        ax_acc.plot(xs, [100 * r.accuracy for r in runs], marker="o", label=f"MPC ({mode})")
        ax_mem.plot(xs, [r.peak_bytes / MIB for r in runs], marker="o", label=f"MPC ({mode})")
    ax_acc.axhline(100 * bp.accuracy, color="black", linestyle="--", label="BP")
    ax_mem.axhline(bp.peak_bytes / MIB, color="black", linestyle="--", label="BP")
    for ax, title, ylabel in (
        (ax_acc, "Evaluation accuracy", "accuracy on held-out digits (%)"),
        (ax_mem, "Real memory of one training step", "peak MiB above the step's start"),
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


def _results_csv(results: Sequence[MethodResult], timings: Timings) -> str:
    lines = ["method,mode,horizon,accuracy,peak_bytes,step_ms,time_ratio,fit_s"]
    for r in results:
        m = r.method
        lines.append(
            f"{m.label},{m.mode or ''},{m.horizon or ''},{r.accuracy},{r.peak_bytes},"
            f"{1e3 * timings.time(m.key).median},{timings.ratio(m.key).median},{r.fit_s}"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The demo's command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_mpc.demo",
        description="Train an 8-block MLP on the bundled MNIST digits with back-propagation and with MPC at "
        "several horizons; write report.md and report.png.",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/demo"), help="output folder (default: %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=10, help="training epochs per run (default: %(default)s)")
    parser.add_argument(
        "--horizons", type=horizon_list, default=[1, 2, 4], help="comma-separated MPC horizons (default: 1,2,4)"
    )
    parser.add_argument(
        "--modes",
        type=mode_list,
        default=["sliding"],
        help="comma-separated MPC modes: sliding, block (default: sliding)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=512, help="batch size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--limit", type=positive_int, default=None, help="use only this many digits per split (smoke runs)"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="interleaved timing rounds (default: %(default)s)"
    )
    parser.add_argument(
        "--timing-steps", type=positive_int, default=15, help="timed steps per run and round (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op CPU threads (default: 1; the demo's 256-wide matrix products are too small to gain "
        "from more, and on a small shared machine extra threads cost more in synchronisation than they save)",
    )
    return parser


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
    setup = TrainingSetup(NUM_BLOCKS, args.epochs, args.batch_size, args.seed, args.limit, "cpu")
    methods = demo_methods(args.horizons, args.modes)
    results = [_trained(method, setup, out) for method in methods]
    print(f"Timing {len(methods)} runs in {args.rounds} interleaved rounds ...", flush=True)
    timings = time_methods(methods, setup, rounds=args.rounds, steps=args.timing_steps)

    half = NUM_BLOCKS // 2
    dashboard = run_dashboard(half if half in args.horizons else max(args.horizons), args.modes[0], setup, out)
    write_plot(out / "report.png", results)
    table = write_report(
        out / "report.md",
        results,
        timings,
        args=args,
        command=command,
        total_s=time.perf_counter() - start,
        dashboard=dashboard,
    )
    (out / "results.csv").write_text(_results_csv(results, timings), encoding="utf-8")
    print()
    print(table)
    print()
    print(timings.noise_note())
    for line in accuracy_verdicts(results, NUM_BLOCKS):
        print(line)
    wrote = f"{out / 'report.md'}, {out / 'report.png'} and {dashboard.html}"
    print(f"\nWrote {wrote} in {time.perf_counter() - start:.1f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
