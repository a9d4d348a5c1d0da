"""Choosing the horizon: measure, fit the two laws, pick ``h`` for the user's objective.

Ren & Li's method: the gradient of horizon ``h`` makes an angle ``theta_h`` with the true one, with
``1 - cos^2(theta_h) ~ c (1 - h/T)^p``, and holds ``M(h) ~ a h + b`` bytes of activations. Both are
measured on a few batches at a handful of horizons, fitted, and the horizon is chosen for one of
three objectives:

- ``memory_budget``: the best alignment whose memory fits in the budget;
- ``min_alignment``: the least memory that reaches the alignment;
- ``memory_weight`` ``lam``: the minimum of ``lam * M(h) - cos^2(h)``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor, nn

from lightning_mpc.core.isolation import forked_rng, module_devices
from lightning_mpc.core.schedule import Mode, validate_mode
from lightning_mpc.horizon.laws import AlignmentLaw, MemoryLaw, fit_alignment_law, fit_memory_law
from lightning_mpc.horizon.probes import probe_batch
from lightning_mpc.horizon.units import format_bytes, parse_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "HorizonReport",
    "Objective",
    "choose_horizon",
    "default_probes",
    "select_horizon",
    "validate_objective",
]

ObjectiveKind = Literal["memory_budget", "min_alignment", "memory_weight"]


@dataclass(frozen=True)
class Objective:
    """What the horizon is chosen for.

    Attributes:
        kind: ``"memory_budget"`` (``value`` in bytes), ``"min_alignment"`` (a ``cos^2`` target) or
            ``"memory_weight"`` (``lam``, per byte).
        value: the objective's number.
    """

    kind: ObjectiveKind
    value: float

    def describe(self) -> str:
        """The objective as ``name = value`` text."""
        if self.kind == "memory_budget":
            return f"memory_budget = {format_bytes(self.value)} ({int(self.value)} bytes)"
        return f"{self.kind} = {self.value:g}"


def validate_objective(
    memory_budget: float | str | None = None,
    min_alignment: float | None = None,
    memory_weight: float | None = None,
) -> Objective:
    """Check that exactly one objective is given and that its value makes sense.

    Raises:
        ValueError: if none or several are given, or the value is out of range.
    """
    given = {
        name: value
        for name, value in (
            ("memory_budget", memory_budget),
            ("min_alignment", min_alignment),
            ("memory_weight", memory_weight),
        )
        if value is not None
    }
    if len(given) != 1:
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items()) or "none"
        raise ValueError(
            f"Horizon selection needs exactly one objective, got {shown}. HINT: pass one of memory_budget "
            '(e.g. "2GB"), min_alignment (a cos^2 in (0, 1], e.g. 0.9) or memory_weight (lam >= 0 per byte).'
        )
    ((kind, value),) = given.items()
    if kind == "memory_budget":
        return Objective("memory_budget", float(parse_bytes(value)))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{kind} must be a finite number, got {value!r}. HINT: pass a float.")
    if kind == "min_alignment":
        if value <= 0:
            raise ValueError(
                f"min_alignment must be > 0, got {value!r}: every horizon reaches it. HINT: pass a cos^2 in (0, 1], "
                "e.g. 0.9; use memory_budget to minimise memory."
            )
        if value > 1:
            raise ValueError(
                f"min_alignment={value!r} cannot be reached: cos^2 is at most 1, which back-propagation "
                "(h = T) achieves. Closest achievable: 1.0 at h = T. HINT: pass a cos^2 in (0, 1]."
            )
        return Objective("min_alignment", float(value))
    if value < 0:
        raise ValueError(
            f"memory_weight must be >= 0, got {value!r}. HINT: lam is the price of one byte in units of cos^2; "
            "0 picks the best alignment, larger values trade alignment for memory."
        )
    return Objective("memory_weight", float(value))


def default_probes(num_blocks: int) -> list[int]:
    """The horizons measured by default: ``1, 2, 4, 8, ...`` below ``T``, and ``T``."""
    probes = set()
    horizon = 1
    while horizon < num_blocks:
        probes.add(horizon)
        horizon *= 2
    probes.add(num_blocks)
    return sorted(probes)


def choose_horizon(
    objective: Objective,
    alignment: Callable[[int], float],
    memory: Callable[[int], float],
    num_blocks: int,
) -> int:
    """The horizon in ``1..T`` that meets ``objective``, given ``cos^2`` and bytes for every horizon.

    Ties go to less memory, then to better alignment, then to the smaller horizon.

    Raises:
        ValueError: if the budget is below what every horizon needs, or no horizon reaches the alignment;
            the message states the closest achievable value.
    """
    horizons = range(1, num_blocks + 1)
    table = {h: (alignment(h), memory(h)) for h in horizons}
    if objective.kind == "memory_budget":
        feasible = [h for h in horizons if table[h][1] <= objective.value]
        if not feasible:
            smallest = min(horizons, key=lambda h: (table[h][1], h))
            need = table[smallest][1]
            raise ValueError(
                f"memory_budget={format_bytes(objective.value)} ({int(objective.value)} bytes) is smaller than any "
                f"horizon needs. Closest achievable: {format_bytes(need)} ({math.ceil(need)} bytes) at "
                f"h = {smallest}. HINT: raise the budget to at least {math.ceil(need)} bytes, use smaller batches, "
                "or cut the network into more, smaller blocks (the budget is the real peak of a training step: "
                "activations, gradients and temporaries, parameters and optimizer state excluded)."
            )
        return min(feasible, key=lambda h: (-table[h][0], table[h][1], h))
    if objective.kind == "min_alignment":
        feasible = [h for h in horizons if table[h][0] >= objective.value]
        if not feasible:
            best = max(horizons, key=lambda h: (table[h][0], -h))
            raise ValueError(
                f"min_alignment={objective.value:g} cannot be reached. Closest achievable: cos^2 = "
                f"{table[best][0]:.6g} at h = {best}. HINT: lower min_alignment to at most {table[best][0]:.6g}."
            )
        return min(feasible, key=lambda h: (table[h][1], -table[h][0], h))
    return min(horizons, key=lambda h: (objective.value * table[h][1] - table[h][0], table[h][1], h))


@dataclass(frozen=True)
class HorizonReport:
    """The measurements, the fitted laws and the chosen horizon.

    Attributes:
        alignment: measured ``cos^2`` between the horizon's block gradient and back-propagation's, mean
            over the batches, per probed horizon.
        memory: the measured real peak of a step (allocator bytes above the step's start: activations,
            gradients and temporaries), the largest over the batches, per probed horizon.
        alignment_law: the fitted ``1 - cos^2 = c (1 - h/T)^p``.
        memory_law: the fitted ``M(h) = a h + b``.
        objective: what the horizon was chosen for.
        horizon: the choice.
        num_blocks: ``T``.
        mode: the window rule the measurements used.
        num_batches: how many batches the alignment is averaged over.
    """

    alignment: dict[int, float]
    memory: dict[int, int]
    alignment_law: AlignmentLaw
    memory_law: MemoryLaw
    objective: Objective
    horizon: int
    num_blocks: int
    mode: Mode = "sliding"
    num_batches: int = 1

    def predict_alignment(self, horizon: float) -> float:
        """``cos^2`` of the fitted law at ``horizon``."""
        return self.alignment_law.predict(horizon)

    def predict_memory(self, horizon: float) -> float:
        """Activation bytes of the fitted law at ``horizon``."""
        return self.memory_law.predict(horizon)

    def alignment_at(self, horizon: int) -> float:
        """The measured ``cos^2`` for a probed horizon, else the fitted one (what the choice uses)."""
        horizon = min(horizon, self.num_blocks)
        measured = self.alignment.get(horizon)
        return measured if measured is not None else self.predict_alignment(horizon)

    def memory_at(self, horizon: int) -> float:
        """The measured bytes for a probed horizon, else the fitted ones (what the choice uses)."""
        horizon = min(horizon, self.num_blocks)
        measured = self.memory.get(horizon)
        return float(measured) if measured is not None else self.predict_memory(horizon)

    def rows(self) -> list[dict[str, Any]]:
        """One row per probed horizon and for the choice: measured and fitted values, whether chosen."""
        horizons = sorted({*self.alignment, self.horizon})
        return [
            {
                "horizon": h,
                "measured": h in self.alignment,
                "alignment": self.alignment.get(h),
                "alignment_fit": self.predict_alignment(h),
                "memory_bytes": self.memory.get(h),
                "memory_fit_bytes": self.predict_memory(h),
                "chosen": h == self.horizon,
            }
            for h in horizons
        ]

    def summary(self) -> str:
        """A plain-text table of the measurements, the fits and the choice."""
        lines = [
            (
                f"Horizon selection: T = {self.num_blocks} blocks, mode {self.mode!r}, {self.num_batches} batch(es); "
                f"{self.objective.describe()} -> h = {self.horizon}"
            ),
            f"{'h':>5}  {'cos^2':>9}  {'fit':>9}  {'memory':>10}  {'fit':>10}",
        ]
        for row in self.rows():
            measured_a = "-" if row["alignment"] is None else f"{row['alignment']:.4f}"
            measured_m = "-" if row["memory_bytes"] is None else format_bytes(row["memory_bytes"])
            mark = "  <- chosen" if row["chosen"] else ""
            lines.append(
                f"{row['horizon']:>5}  {measured_a:>9}  {row['alignment_fit']:>9.4f}  {measured_m:>10}  "
                f"{format_bytes(row['memory_fit_bytes']):>10}{mark}"
            )
        lines.append(f"alignment law: {self.alignment_law.describe()}")
        lines.append(f"memory law:    {self.memory_law.describe()}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def hyperparameters(self, prefix: str = "mpc/") -> dict[str, Any]:
        """Flat values to log as hyperparameters: the choice, the objective and the fitted laws."""
        return {
            f"{prefix}horizon": self.horizon,
            f"{prefix}horizon_objective": self.objective.kind,
            f"{prefix}horizon_objective_value": self.objective.value,
            f"{prefix}alignment_exponent": self.alignment_law.exponent,
            f"{prefix}alignment_coefficient": self.alignment_law.coefficient,
            f"{prefix}memory_slope_bytes": self.memory_law.slope,
            f"{prefix}memory_intercept_bytes": self.memory_law.intercept,
            f"{prefix}chosen_alignment": self.alignment_at(self.horizon),
            f"{prefix}chosen_memory_bytes": self.memory_at(self.horizon),
        }

    def plot(self) -> Figure:
        """A matplotlib figure: measured points and fitted laws for alignment and memory, the choice marked.

        The figure is not registered with ``pyplot``; save it with ``fig.savefig(path)``.
        """
        from matplotlib.figure import Figure

        T = self.num_blocks
        fig = Figure(figsize=(10, 4), layout="constrained")
        ax_a, ax_m = fig.subplots(1, 2)
        steps = max(200, 4 * T)
        grid = [1 + (T - 1) * i / steps for i in range(steps + 1)]
        hs = sorted(self.alignment)
        ax_a.plot(grid, [self.predict_alignment(h) for h in grid], color="C0", label=self.alignment_law.describe())
        ax_a.plot(hs, [self.alignment[h] for h in hs], "o", color="C0", label="measured")
        ax_a.set_xlabel("horizon h")
        ax_a.set_ylabel("cos² to back-propagation")
        ax_a.set_ylim(min(0.0, *self.alignment.values()) - 0.02, 1.02)
        ax_a.set_title("Alignment")
        hm = sorted(self.memory)
        ax_m.plot(grid, [self.predict_memory(h) / 1e6 for h in grid], color="C1", label=self.memory_law.describe())
        ax_m.plot(hm, [self.memory[h] / 1e6 for h in hm], "o", color="C1", label="measured")
        ax_m.set_xlabel("horizon h")
        ax_m.set_ylabel("real peak of a step (MB)")
        ax_m.set_title("Memory")
        if self.objective.kind == "memory_budget":
            ax_m.axhline(self.objective.value / 1e6, color="grey", linestyle="--", label="budget")
        elif self.objective.kind == "min_alignment":
            ax_a.axhline(self.objective.value, color="grey", linestyle="--", label="min_alignment")
        for ax, value in ((ax_a, self.alignment_at(self.horizon)), (ax_m, self.memory_at(self.horizon) / 1e6)):
            ax.axvline(self.horizon, color="C3", linestyle=":")
            ax.plot([self.horizon], [value], "*", color="C3", markersize=14, label=f"chosen h = {self.horizon}")
            ax.legend(fontsize=7)
        fig.suptitle(f"Horizon selection, T = {T}: {self.objective.describe()}")
        return fig


def _split_batch(item: Any, index: int) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise ValueError(
        f"Batch {index} is a {type(item).__name__}{f' of length {len(item)}' if isinstance(item, (tuple, list)) else ''}"
        ", expected an (input, target) pair. HINT: pass batches as [(x, y), ...] with x the input of block 0 and y "
        "the second argument of loss_fn."
    )


def _validate_probes(probes: Iterable[int] | None, num_blocks: int) -> list[int]:
    if probes is None:
        return default_probes(num_blocks)
    result = set()
    for h in probes:
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise ValueError(
                f"probes must be integers >= 1, got {h!r}. HINT: pass horizons such as [1, 2, 4, {num_blocks}], or "
                "probes=None for a geometric set."
            )
        result.add(min(h, num_blocks))
    result.add(num_blocks)  # back-propagation is the reference; measuring it costs nothing more
    return sorted(result)


def select_horizon(
    blocks: Sequence[nn.Module],
    heads: Sequence[nn.Module | None],
    batches: Iterable[tuple[Any, Any]],
    loss_fn: Callable[[Tensor, Any], Tensor],
    *,
    memory_budget: float | str | None = None,
    min_alignment: float | None = None,
    memory_weight: float | None = None,
    probes: Iterable[int] | None = None,
    mode: Mode = "sliding",
) -> HorizonReport:
    """Measure alignment and memory at a few horizons, fit both laws and choose the horizon.

    For every batch and every probed horizon ``h`` the MPC gradient of all block parameters
    (concatenated; heads excluded) is computed with :func:`~lightning_mpc.horizon_backward` and compared
    with back-propagation's (``h = T``) by ``cos^2``; the alignment is the mean over the batches. The
    real peak of each step (allocator bytes, :class:`~lightning_mpc.RealMemoryMeter`) is measured in the
    same run (the largest over the batches). The laws ``1 - cos^2 = c (1 - h/T)^p`` and ``M(h) = a h + b``
    are fitted and the horizon is chosen over ``1..T``, measured values winning over predictions for
    probed horizons. Exactly one objective must be given.

    The model is left untouched: ``.grad``, buffers (BatchNorm statistics) and the global random state
    are as before the call. The modules are probed in the mode they are in (``train()`` or ``eval()``).

    Args:
        blocks: the blocks ``0..T-1`` (see :func:`lightning_mpc.partition`).
        heads: ``T - 1`` local heads, ``None`` or ``nn.Identity`` for none.
        batches: ``(x, target)`` pairs: ``x`` is the input of block 0, ``target`` the second argument of
            ``loss_fn``. A few batches suffice.
        loss_fn: ``loss_fn(prediction, target) -> scalar``, for the local losses and the final one.
        memory_budget: bytes, or a string such as ``"2GB"``/``"2G"`` (10^9 bytes) or ``"512MiB"``/``"512Mi"`` (2^20 bytes):
            choose the best alignment whose step fits (the real peak of a training step above what is
            allocated before it: activations, gradients and temporaries).
        min_alignment: a ``cos^2`` in ``(0, 1]``: choose the least memory that reaches it.
        memory_weight: ``lam >= 0`` per byte: choose the minimum of ``lam * M(h) - cos^2(h)``.
        probes: the horizons to measure; default ``1, 2, 4, ...`` and ``T``. ``T`` is always measured
            (it is the reference); values above ``T`` count as ``T``.
        mode: the window rule to measure, ``"sliding"`` (the paper's, the default) or ``"block"``.

    Returns:
        The :class:`HorizonReport`; ``report.horizon`` is the choice.

    Raises:
        ValueError: for a missing or doubled objective, an impossible budget or an unreachable alignment
            (the message states the closest achievable value), or malformed batches.

    Example::

        report = lightning_mpc.select_horizon(blocks, heads, [(x, y)], F.cross_entropy, memory_budget="2GB")
        print(report.summary())
        report.plot().savefig("horizon.png")
    """
    objective = validate_objective(memory_budget, min_alignment, memory_weight)
    mode = validate_mode(mode)
    blocks = list(blocks)
    heads = list(heads)
    if not blocks:
        raise ValueError("select_horizon got no blocks. HINT: pass the model cut into blocks, see partition().")
    num_blocks = len(blocks)
    horizons = _validate_probes(probes, num_blocks)
    pairs = [_split_batch(item, i) for i, item in enumerate(batches)]
    if not pairs:
        raise ValueError("select_horizon got no batches. HINT: pass at least one (input, target) pair.")

    sums = {h: 0.0 for h in horizons}
    peaks = {h: 0 for h in horizons}
    used = 0
    with forked_rng(module_devices([*blocks, *heads])):
        for x, target in pairs:
            probe = probe_batch(blocks, heads, x, target, loss_fn, horizons, mode)
            for h in horizons:
                peaks[h] = max(peaks[h], probe.memory[h])
            if probe.backprop_norm == 0.0:
                continue
            used += 1
            for h in horizons:
                sums[h] += probe.alignment[h]
    if used == 0:
        raise ValueError(
            f"Back-propagation's gradient of the blocks is zero on all {len(pairs)} batches, so no horizon can be "
            "aligned with it. HINT: pass batches with a non-zero loss (an untrained model, not a converged one)."
        )
    if used < len(pairs):
        warnings.warn(
            f"{len(pairs) - used} of {len(pairs)} batches had a zero back-propagation gradient and were left out "
            "of the alignment.",
            stacklevel=2,
        )
    alignment = {h: sums[h] / used for h in horizons}
    memory = dict(peaks)
    alignment_law = fit_alignment_law(alignment, num_blocks)
    memory_law = fit_memory_law(memory, num_blocks)
    report = HorizonReport(
        alignment=alignment,
        memory=memory,
        alignment_law=alignment_law,
        memory_law=memory_law,
        objective=objective,
        horizon=num_blocks,
        num_blocks=num_blocks,
        mode=mode,
        num_batches=used,
    )
    chosen = choose_horizon(objective, report.alignment_at, report.memory_at, num_blocks)
    return dataclasses.replace(report, horizon=chosen)
