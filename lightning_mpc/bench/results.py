"""The results table and the accuracy check shared by the demo report and the frontier page."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_mpc.bench.table import Table, mib
from lightning_mpc.bench.timing import Timings
from lightning_mpc.bench.training import MethodResult

__all__ = ["ACCURACY_TOLERANCE", "accuracy_verdicts", "results_table"]

ACCURACY_TOLERANCE = 1.5
"""Accuracy points within which MPC at ``h = T/2`` counts as matching back-propagation."""


def results_table(
    results: Sequence[MethodResult], timings: Timings, num_blocks: int, *, batch_size: int | None = None
) -> Table:
    """One row per method: accuracy, real peak and its ratio to back-propagation (the first row), step time and its
    ratio from the interleaved rounds (median, with the interquartile range over rounds).

    Args:
        results: the methods' results, back-propagation first.
        timings: the interleaved timing of the same methods (by :attr:`~lightning_mpc.bench.methods.Method.key`).
        num_blocks: ``T``, for the horizon column.
        batch_size: adds a samples/s column when given.
    """
    bp = results[0]
    header = ["method", "h", "eval accuracy (%)", "real peak (MiB)", "memory / BP", "step (ms)", "time / BP (IQR)"]
    if batch_size is not None:
        header.append("samples/s")
    table = Table(header)
    for r in results:
        key = r.method.key
        step = timings.time(key)
        cells = [
            r.method.label,
            r.method.horizon_text(num_blocks),
            f"{100 * r.accuracy:.2f}",
            mib(r.peak_bytes),
            f"{r.peak_bytes / bp.peak_bytes:.2f}",
            f"{1e3 * step.median:.2f}",
            timings.ratio(key).format(),
        ]
        if batch_size is not None:
            cells.append(f"{batch_size / step.median:,.0f}")
        table.add(*cells)
    return table


def accuracy_verdicts(
    results: Sequence[MethodResult], num_blocks: int, tolerance: float = ACCURACY_TOLERANCE
) -> list[str]:
    """Per MPC mode: is MPC at ``h = T/2`` within ``tolerance`` accuracy points of back-propagation (the first row)?"""
    bp, half = results[0], num_blocks // 2
    lines = []
    for mode in dict.fromkeys(r.method.mode for r in results if r.method.family == "mpc"):
        runs = [r for r in results if r.method.family == "mpc" and r.method.mode == mode]
        match = [r for r in runs if r.method.horizon == half]
        if not match:
            shown = ", ".join(str(r.method.horizon) for r in runs)
            lines.append(
                f"- MPC {mode} at h = T/2 = {half} was not run (horizons: {shown}), so it is not compared with BP."
            )
            continue
        gap = 100 * (bp.accuracy - match[0].accuracy)
        verdict = "within" if abs(gap) <= tolerance else "NOT within"
        lines.append(
            f"- MPC {mode} at h = T/2 = {half} is **{verdict}** {tolerance} accuracy points of BP: "
            f"{100 * match[0].accuracy:.2f} % against {100 * bp.accuracy:.2f} % (BP minus MPC: {gap:+.2f} points), "
            f"at {match[0].peak_bytes / bp.peak_bytes:.2f} x its real memory."
        )
    return lines
