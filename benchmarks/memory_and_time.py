"""Real memory and step time of MPC against back-propagation and activation checkpointing, side by side.

For every workload (``--models``), in one process, on the same model, batch and seed:

* back-propagation (forward, cross-entropy, one ``backward``);
* activation checkpointing (``torch.utils.checkpoint``, non-reentrant) on every block, and in segments of
  about sqrt(T) blocks;
* MPC (:func:`lightning_mpc.horizon_backward`) in ``sliding`` and ``block`` mode for every ``--horizons``.

Memory is the **real peak** of one step: allocator bytes above what was allocated before the step
(:class:`lightning_mpc.RealMemoryMeter`; on CPU the profiler's allocator events, on CUDA
``max_memory_allocated``), with every ``.grad`` allocated beforehand and zeroed in place, so that no step
pays for allocating gradients. Next to it: the window model's prediction
(``profile_real_memory(...).predict_peak(h, mode)``; ``h = T`` for back-propagation) and, as a labelled
breakdown, the peak of bytes saved for backward (``SavedTensorMeter``; checkpointing saves behind hooks of
its own, so its cell is empty). Under each table: what the real peak at ``h = 1`` is made of
(``RealMemoryProfile.breakdown(1)``).

Time: the configurations take turns, one step each per round, for ``--rounds`` rounds (even rounds in
order, odd rounds reversed); a time ratio is the median over rounds of the step time over
back-propagation's in the same round, shown with its interquartile range. A run whose back-propagation
steps vary by more than 1.5x is flagged as noisy.

The depth-scaling tables (``--depth``, one per group of networks of one family) measure the real peak of
back-propagation, checkpointing and MPC ``h = 1, 2`` at several depths and fit the bytes per block (the
slope of a least-squares line of the peak against the number of blocks).

On a machine with CUDA every workload is measured on the CPU and on the GPU (``--devices``); without one
the CUDA figures are marked as not run.

Usage::

    python benchmarks/memory_and_time.py --markdown          # or: make bench (about 3 to 5 minutes on 2 cores)
    python benchmarks/memory_and_time.py --models mlp --batch 2048 --rounds 3 --depth none --markdown
    python benchmarks/memory_and_time.py --quick             # seconds: tiny workloads, for tests
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch

from lightning_mpc.bench import (
    MIB,
    StepConfig,
    Table,
    Timings,
    Workload,
    fit_bytes_per_block,
    interleaved_rounds,
    machine_line,
    make_workload,
    mib,
    prepare_gradients,
    saved_tensor_peak,
    standard_configs,
    step_peak,
    time_call,
    window_model,
)
from lightning_mpc.bench.steps import Step
from lightning_mpc.bench.workloads import WORKLOAD_NAMES
from lightning_mpc.core.memory import preserved_buffers

SEED = 0
DEPTH_DEFAULT = ["resnet20,resnet56,resnet110", "mlp-8,mlp-16,mlp-32"]
QUICK = {"models": "mlp-4", "batch": 32, "rounds": 2, "depth": ["mlp-2,mlp-3,mlp-4"], "depth_batch": 32}
PREDICTION_BAND = (0.8, 1.25)
"""Measured over predicted outside this band is listed under the table."""


@dataclass
class Row:
    """One configuration's figures.

    Attributes:
        config: the configuration.
        peak_bytes: the real peak of one step.
        predicted_bytes: the window model's prediction (``None`` for checkpointing).
        saved_bytes: peak bytes saved for backward, a breakdown (``None`` for checkpointing).
    """

    config: StepConfig
    peak_bytes: int = 0
    predicted_bytes: int | None = None
    saved_bytes: int | None = None
    notes: list[str] = field(default_factory=list)


def warm_up(step: Step, params: list[torch.nn.Parameter], times: int) -> None:
    """Untimed steps (first-call allocations, kernel choice)."""
    for _ in range(times):
        prepare_gradients(params)
        step()


def timed_step(step: Step, params: list[torch.nn.Parameter], device: torch.device) -> float:
    """Seconds of one step; gradients are zeroed in place beforehand, outside the timing."""
    prepare_gradients(params)
    return time_call(step, device=device)


def measure(w: Workload, args: argparse.Namespace, device: torch.device) -> tuple[list[Row], Timings, dict[str, int]]:
    """Every configuration of a workload: real peak, prediction, saved-tensor breakdown, interleaved timing.

    Returns:
        The rows, their timings and the window model's breakdown of the real peak at ``h = 1``.
    """
    params = w.parameters()
    with preserved_buffers(w.modules()):
        model = window_model(w)
        rows = [Row(c) for c in standard_configs(w, args.horizons, args.modes)]
        for row in rows:
            torch.manual_seed(SEED)
            warm_up(row.config.step, params, args.warmup)
            row.peak_bytes = step_peak(row.config.step, params, device).peak_bytes
            row.predicted_bytes = model.predict(row.config)
            if row.config.kind != "checkpoint":
                row.saved_bytes = saved_tensor_peak(row.config.step, params)
        runs = {row.config.label: partial(timed_step, row.config.step, params, device) for row in rows}
        timings = interleaved_rounds(runs, args.rounds)
    return rows, timings, model.local.breakdown(1)


def checks(rows: Sequence[Row], num_blocks: int) -> list[str]:
    """MPC rows not below back-propagation for ``h < T``, and predictions off by more than :data:`PREDICTION_BAND`."""
    bp = rows[0].peak_bytes
    found = []
    for row in rows:
        if row.predicted_bytes:
            fit = row.peak_bytes / row.predicted_bytes
            if not PREDICTION_BAND[0] <= fit <= PREDICTION_BAND[1]:
                found.append(f"{row.config.label}: measured {fit:.2f} x the window model's prediction")
        horizon = row.config.horizon
        if horizon is not None and horizon < num_blocks and row.peak_bytes >= bp:
            found.append(f"{row.config.label}: {row.peak_bytes / bp:.2f} x back-propagation with h < T = {num_blocks}")
    return found


def workload_report(
    w: Workload, rows: Sequence[Row], timings: Timings, breakdown: dict[str, int], device: torch.device, markdown: bool
) -> str:
    """The table of one workload on one device, the noise line, the h = 1 breakdown and the checks."""
    bp = rows[0].peak_bytes
    table = Table(
        [
            "configuration",
            "real peak MiB",
            "x BP",
            "predicted MiB",
            "real/pred",
            "saved-for-backward MiB (breakdown)",
            "ms",
            "time x BP (IQR)",
        ]
    )
    for row in rows:
        label = row.config.label
        fit = "-" if not row.predicted_bytes else f"{row.peak_bytes / row.predicted_bytes:.2f}"
        table.add(
            label,
            mib(row.peak_bytes),
            f"{row.peak_bytes / bp:.2f}",
            mib(row.predicted_bytes),
            fit,
            mib(row.saved_bytes),
            f"{1e3 * timings.time(label).median:.1f}",
            timings.ratio(label).format(),
        )
    total = sum(breakdown.values())
    parts = (
        ", ".join(f"{name} {mib(value)} MiB ({100 * value / total:.0f} %)" for name, value in breakdown.items())
        if total
        else "-"
    )
    title = f"{w.name} on {device.type}: {w.description}, T = {w.num_blocks}"
    found = checks(rows, w.num_blocks)
    lines = [
        f"### {title}" if markdown else title,
        "",
        table.render(markdown),
        "",
        timings.noise_note(),
        "",
        (
            f"What the real peak at h = 1 is made of (window model, `RealMemoryProfile.breakdown(1)`): "
            f"{mib(total)} MiB = {parts}; graphs are the tensors saved for backward."
        ),
        "",
        "checks: none" if not found else "checks:\n" + "\n".join(f"- {n}" for n in found),
    ]
    return "\n".join(lines)


DEPTH_COLUMNS: list[tuple[str, str]] = [
    ("back-propagation", "BP"),
    ("checkpoint every block", "ckpt every block"),
    ("sqrt", "ckpt every ~sqrt(T)"),
    ("MPC sliding h=1", "MPC h=1"),
    ("MPC sliding h=2", "MPC h=2"),
]


def depth_peaks(w: Workload, warmup: int, device: torch.device) -> dict[str, int]:
    """Real peaks of back-propagation, checkpointing and MPC sliding ``h = 1, 2`` on one workload, by column key."""
    params = w.parameters()
    peaks: dict[str, int] = {}
    with preserved_buffers(w.modules()):
        for config in standard_configs(w, (1, 2), ("sliding",)):
            key = "sqrt" if config.kind == "checkpoint" and config.segment != 1 else config.label
            torch.manual_seed(SEED)
            warm_up(config.step, params, warmup)
            peaks[key] = step_peak(config.step, params, device).peak_bytes
    return peaks


def depth_report(names: Sequence[str], batch: int | None, warmup: int, device: torch.device, markdown: bool) -> str:
    """Real peaks of the depth-scaling group ``names`` and the fitted bytes per block of each method."""
    table = Table(["network", "T", *(f"{title} MiB" for _, title in DEPTH_COLUMNS), "h=1 / BP"])
    depths: list[int] = []
    measured: list[dict[str, int]] = []
    for name in names:
        w = make_workload(name, batch=batch, device=device, seed=SEED)
        peaks = depth_peaks(w, warmup, device)
        depths.append(w.num_blocks)
        measured.append(peaks)
        cells = [mib(peaks.get(key)) for key, _ in DEPTH_COLUMNS]
        ratio = peaks["MPC sliding h=1"] / peaks["back-propagation"]
        table.add(w.name, w.num_blocks, *cells, f"{ratio:.3f}")
        print(f"  depth {w.name}: done", file=sys.stderr, flush=True)
    fits = []
    for key, title in DEPTH_COLUMNS:
        values = [(d, m[key]) for d, m in zip(depths, measured) if key in m]
        if len({d for d, _ in values}) >= 2:
            fit = fit_bytes_per_block([d for d, _ in values], [p for _, p in values])
            fits.append(f"{title} {fit.slope / 1024:,.1f} KiB/block (intercept {fit.intercept / MIB:.2f} MiB)")
    batch_text = f"batch {batch}" if batch is not None else "default batch"
    title = f"Depth scaling on {device.type}: {', '.join(names)} ({batch_text})"
    return "\n".join(
        [
            f"### {title}" if markdown else title,
            "",
            table.render(markdown),
            "",
            "Fitted bytes per block (slope of peak against T): " + "; ".join(fits) + ".",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(prog="python benchmarks/memory_and_time.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="mlp,resnet18,resnet20", help=f"comma-separated workloads: {WORKLOAD_NAMES}"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="batch size of every --models workload (default: per family)"
    )
    parser.add_argument("--horizons", default="1,2,4", help="comma-separated MPC horizons (default: %(default)s)")
    parser.add_argument("--modes", default="sliding,block", help="comma-separated MPC modes (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (default: %(default)s)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed steps per configuration first (default: %(default)s)"
    )
    parser.add_argument(
        "--depth",
        action="append",
        default=None,
        help="a comma-separated group of networks of one family for a depth-scaling table; repeat for several; "
        "'none' skips (default: resnet20,resnet56,resnet110 and mlp-8,mlp-16,mlp-32)",
    )
    parser.add_argument(
        "--depth-batch", type=int, default=None, help="batch size of the depth tables (default: per family)"
    )
    parser.add_argument(
        "--devices", default="auto", help="cpu, cuda or both comma-separated; auto: cpu, and cuda when present"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--quick", action="store_true", help="tiny workloads, 2 rounds (a smoke run for tests)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.horizons = [int(h) for h in str(args.horizons).split(",") if h.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in ("sliding", "block")]
    if bad or not args.horizons or min(args.horizons) < 1 or args.rounds < 1:
        parser.error(
            f"--modes must be sliding/block, --horizons positive and --rounds >= 1 "
            f"(got modes {args.modes}, horizons {args.horizons})"
        )
    groups = DEPTH_DEFAULT if args.depth is None else args.depth
    args.depth = [[n.strip() for n in g.split(",") if n.strip()] for g in groups if g.strip() != "none"]
    return args


def devices(spec: str) -> tuple[list[torch.device], str | None]:
    """The devices to measure and, when CUDA was wanted but is absent, the line that says so."""
    wanted = ["cpu", "cuda"] if spec == "auto" else [d.strip() for d in spec.split(",") if d.strip()]
    found = [torch.device(d) for d in wanted if d != "cuda" or torch.cuda.is_available()]
    missing = "cuda" in wanted and not torch.cuda.is_available()
    return found, (
        "CUDA: not run (no CUDA device on this machine); the figures below are CPU figures." if missing else None
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every requested workload and depth group; print the tables."""
    start = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen, cuda_note = devices(args.devices)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"machine: {machine_line(chosen[-1] if chosen else None)}")
    print(f"rounds: {args.rounds}, warm-up steps: {args.warmup}, devices: {', '.join(str(d) for d in chosen)}")
    if cuda_note:
        print(cuda_note)
    print()
    for device in chosen:
        for name in names:
            w = make_workload(name, batch=args.batch, device=device, seed=SEED)
            rows, timings, breakdown = measure(w, args, device)
            print(workload_report(w, rows, timings, breakdown, device, args.markdown) + "\n", flush=True)
        for group in args.depth:
            print(depth_report(group, args.depth_batch, args.warmup, device, args.markdown) + "\n", flush=True)
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
