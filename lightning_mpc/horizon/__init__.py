"""Horizon selection: alignment and memory probes, the fitted laws, and the choice of ``h``.

Ren & Li's method (arXiv 2409.19561): measure how well each horizon's update aligns with the true
gradient and how much activation memory it holds, fit ``1 - cos^2 = c (1 - h/T)^p`` and
``M(h) = a h + b``, and pick ``h`` for a memory budget, an alignment target or a weighted trade-off.
"""

from lightning_mpc.horizon.laws import AlignmentLaw, MemoryLaw, fit_alignment_law, fit_memory_law
from lightning_mpc.horizon.probes import BatchProbe, probe_batch
from lightning_mpc.horizon.selection import (
    HorizonReport,
    Objective,
    choose_horizon,
    default_probes,
    select_horizon,
    validate_objective,
)
from lightning_mpc.horizon.units import format_bytes, parse_bytes

__all__ = [
    "AlignmentLaw",
    "BatchProbe",
    "HorizonReport",
    "MemoryLaw",
    "Objective",
    "choose_horizon",
    "default_probes",
    "fit_alignment_law",
    "fit_memory_law",
    "format_bytes",
    "parse_bytes",
    "probe_batch",
    "select_horizon",
    "validate_objective",
]
