"""Activation memory and step time of MPC against back-propagation and activation checkpointing.

Runs every configuration side by side in one process, on the same model, batch and seed:

* back-propagation (the model's forward, cross-entropy, one ``backward``);
* back-propagation with activation checkpointing on every block
  (``torch.utils.checkpoint.checkpoint(block, x, use_reentrant=True)``);
* MPC (:func:`lightning_mpc.horizon_backward`) in ``sliding`` and ``block`` mode for ``h`` in 1, 2, 4.

Memory is the peak of bytes saved for backward (:class:`lightning_mpc.SavedTensorMeter`, parameters
excluded) over a whole step, forward and backward, next to the limit that
:func:`lightning_mpc.profile_blocks` predicts (``window_limit(h, mode)`` for MPC, ``backprop_bytes`` for
back-propagation). Time is the median of ``--repeats``
forward+backward steps (no optimizer) measured without the meter; the configurations take turns, one
step each per round, and the time ratio is the median over rounds of the ratio to back-propagation's
step in the same round, so that drift in a shared machine's speed hits both sides alike. Only ratios
are meant to be compared across machines.

Usage::

    python benchmarks/memory_and_time.py --markdown
    python benchmarks/memory_and_time.py --models resnet18 --repeats 10 --threads 4
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_mpc.core.engine import horizon_backward
from lightning_mpc.core.heads import build_heads, infer_head_spec
from lightning_mpc.core.memory import BlockProfile, SavedTensorMeter, preserved_buffers, profile_blocks
from lightning_mpc.core.partition import partition, run_blocks
from lightning_mpc.core.schedule import Mode

SEED = 0
HORIZONS = (1, 2, 4)
MODES: tuple[Mode, ...] = ("sliding", "block")
MIB = 2**20
Step = Callable[[], None]


# --------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """A model cut into blocks, its local heads and one batch.

    Attributes:
        name: shown in the table's title.
        blocks: the model's blocks, applied in order.
        heads: one local head per block but the last.
        x: the batch's input.
        y: the batch's integer class targets.
    """

    name: str
    blocks: list[nn.Module]
    heads: nn.ModuleList
    x: Tensor
    y: Tensor

    def modules(self) -> list[nn.Module]:
        """Every block and head."""
        return [*self.blocks, *self.heads]

    def parameters(self) -> list[nn.Parameter]:
        """Every block and head parameter, each once."""
        seen: dict[int, nn.Parameter] = {}
        for module in self.modules():
            for param in module.parameters():
                seen.setdefault(id(param), param)
        return list(seen.values())


def mlp_blocks(width: int = 1024, depth: int = 8, in_features: int = 784, classes: int = 10) -> list[nn.Module]:
    """``depth`` blocks: Linear+BatchNorm+ReLU from ``in_features`` to ``width``, then ``width`` to ``width``,
    and a last Linear to ``classes``."""

    def hidden(fan_in: int) -> nn.Module:
        return nn.Sequential(nn.Linear(fan_in, width), nn.BatchNorm1d(width), nn.ReLU())

    layers = [hidden(in_features), *(hidden(width) for _ in range(depth - 2)), nn.Linear(width, classes)]
    return partition(nn.Sequential(*layers))


def resnet18_blocks(classes: int = 10) -> list[nn.Module]:
    """torchvision's resnet18 (random weights, nothing downloaded) cut by :func:`partition`."""
    return partition(torchvision.models.resnet18(weights=None, num_classes=classes))


def local_heads(blocks: Sequence[nn.Module], x: Tensor) -> nn.ModuleList:
    """Heads inferred from the blocks' output shapes (pooled + linear for feature maps)."""
    shapes = []
    with torch.no_grad(), preserved_buffers(blocks):
        for block in blocks:
            x = block(x)
            shapes.append(x.shape)
    return build_heads([infer_head_spec(k, shape, shapes[-1]) for k, shape in enumerate(shapes[:-1])])


def make_workload(name: str, device: torch.device) -> Workload:
    """Build one of the benchmark's workloads with a fixed seed.

    Args:
        name: ``"mlp"`` (8 blocks, width 1024, batch 256 of flattened 28x28 inputs) or
            ``"resnet18"`` (10 blocks, batch 32 of 3x32x32 inputs).
        device: where the model and the batch live.

    Raises:
        ValueError: for an unknown name.
    """
    torch.manual_seed(SEED)
    if name == "mlp":
        blocks, x = mlp_blocks(), torch.randn(256, 784)
    elif name == "resnet18":
        blocks, x = resnet18_blocks(), torch.randn(32, 3, 32, 32)
    else:
        raise ValueError(f"Unknown model {name!r}. HINT: choose from mlp, resnet18.")
    y = torch.randint(0, 10, (x.shape[0],))
    blocks = [block.to(device).train() for block in blocks]
    x, y = x.to(device), y.to(device)
    heads = local_heads(blocks, x).to(device).train()
    return Workload(name, blocks, heads, x, y)


# --------------------------------------------------------------------------- steps
def backprop_step(w: Workload) -> Step:
    """Forward through every block, cross-entropy, one backward."""

    def step() -> None:
        F.cross_entropy(run_blocks(w.blocks, w.x), w.y).backward()

    return step


def checkpoint_step(w: Workload) -> Step:
    """Back-propagation with every block under reentrant activation checkpointing.

    The input requires grad so that the first checkpointed block (and so block 0's parameters) is
    part of the graph; reentrant checkpointing recomputes each block inside ``backward``, where the
    meter sees the recomputed activations.
    """

    def step() -> None:
        x = w.x.detach().requires_grad_(True)
        for block in w.blocks:
            x = checkpoint(block, x, use_reentrant=True)
        F.cross_entropy(x, w.y).backward()

    return step


def mpc_step(w: Workload, horizon: int, mode: Mode) -> Step:
    """One :func:`horizon_backward` call (interleaved forward and window backwards)."""

    def step() -> None:
        horizon_backward(w.blocks, w.heads, w.x, w.y, F.cross_entropy, horizon, mode)

    return step


@dataclass
class Config:
    """One row of the table.

    Attributes:
        label: the row's name.
        step: runs one forward+backward step.
        horizon: the MPC horizon (``None`` for back-propagation and checkpointing).
        limit_bytes: predicted activation bytes (``None`` where no prediction applies).
        peak_bytes: measured peak of bytes saved for backward.
        cuda_bytes: ``max_memory_allocated`` over the step minus what was allocated before (CUDA only).
        times: seconds of each timed repeat.
    """

    label: str
    step: Step
    horizon: int | None = None
    limit_bytes: int | None = None
    peak_bytes: int = 0
    cuda_bytes: int | None = None
    times: list[float] = field(default_factory=list)

    @property
    def median_time(self) -> float:
        """Median step time in seconds."""
        return statistics.median(self.times)

    def time_ratio(self, base: Config) -> float:
        """Median over rounds of this row's time over ``base``'s time in the same round.

        Pairing the repeats by round cancels most of the drift of a shared machine's speed, which
        hits every configuration of a round alike.
        """
        return statistics.median(t / b for t, b in zip(self.times, base.times))


def configs_for(w: Workload, profile: BlockProfile) -> list[Config]:
    """Back-propagation, checkpointing, then MPC sliding and block for every horizon."""
    rows = [
        Config("back-propagation", backprop_step(w), limit_bytes=profile.backprop_bytes),
        Config("BP + checkpoint per block", checkpoint_step(w)),
    ]
    for mode in MODES:
        for h in HORIZONS:
            limit = profile.window_limit(h, mode)
            rows.append(Config(f"MPC {mode} h={h}", mpc_step(w, h, mode), horizon=h, limit_bytes=limit))
    return rows


# --------------------------------------------------------------------------- measurement
def zero_grads(params: Sequence[nn.Parameter]) -> None:
    """Zero gradients in place, so no step pays for (or counts) allocating them."""
    for param in params:
        if param.grad is not None:
            param.grad.zero_()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_saved_bytes(step: Step, params: Sequence[nn.Parameter]) -> int:
    """Peak bytes saved for backward over one whole step (forward and backward inside the meter)."""
    zero_grads(params)
    meter = SavedTensorMeter(exclude=params)
    with meter:
        step()
    return meter.peak_bytes


def measure_cuda_bytes(step: Step, params: Sequence[nn.Parameter], device: torch.device) -> int:
    """Growth of ``torch.cuda.max_memory_allocated`` over one step, above what was allocated before it."""
    zero_grads(params)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def time_step(step: Step, params: Sequence[nn.Parameter], device: torch.device) -> float:
    """Seconds of one forward+backward step (gradients zeroed beforehand, outside the timing)."""
    zero_grads(params)
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def measure(w: Workload, repeats: int, warmup: int, device: torch.device) -> tuple[list[Config], BlockProfile]:
    """Measure every configuration of a workload.

    Each configuration is warmed up, then metered once for memory (and once for CUDA memory on a
    GPU); the timed repeats then take turns across configurations. Buffers (BatchNorm statistics)
    are restored at the end.

    Args:
        w: the workload.
        repeats: timed steps per configuration.
        warmup: untimed steps per configuration before any measurement.
        device: the workload's device.

    Returns:
        The measured rows and the block profile their predictions come from.
    """
    params = w.parameters()
    with preserved_buffers(w.modules()):
        profile = profile_blocks(w.blocks, w.heads, w.x, w.y, F.cross_entropy)
        rows = configs_for(w, profile)
        for row in rows:
            torch.manual_seed(SEED)
            for _ in range(warmup):
                zero_grads(params)
                row.step()
            row.peak_bytes = measure_saved_bytes(row.step, params)
            if device.type == "cuda":
                row.cuda_bytes = measure_cuda_bytes(row.step, params, device)
        for _ in range(repeats):
            for row in rows:
                torch.manual_seed(SEED)
                row.times.append(time_step(row.step, params, device))
    return rows, profile


# --------------------------------------------------------------------------- report
def table(rows: Sequence[Config], cuda: bool) -> list[list[str]]:
    """The table's header and cells; ratios are to the back-propagation row (time: paired by round)."""
    base = rows[0]
    header = ["configuration", "peak MiB", "x BP", "limit MiB", "peak/limit", "ms", "time x BP"]
    if cuda:
        header.append("CUDA peak MiB")
    cells = [header]
    for row in rows:
        limit = "-" if row.limit_bytes is None else f"{row.limit_bytes / MIB:.2f}"
        fit = "-" if row.limit_bytes is None else f"{row.peak_bytes / row.limit_bytes:.2f}"
        line = [
            row.label,
            f"{row.peak_bytes / MIB:.2f}",
            f"{row.peak_bytes / base.peak_bytes:.2f}",
            limit,
            fit,
            f"{row.median_time * 1e3:.1f}",
            f"{row.time_ratio(base):.2f}",
        ]
        if cuda:
            line.append(f"{(row.cuda_bytes or 0) / MIB:.2f}")
        cells.append(line)
    return cells


def render(cells: Sequence[Sequence[str]], markdown: bool) -> str:
    """Aligned plain text, or a Markdown table."""
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]

    def fmt(line: Sequence[str]) -> str:
        parts = [c.ljust(n) if i == 0 else c.rjust(n) for i, (c, n) in enumerate(zip(line, widths))]
        return "| " + " | ".join(parts) + " |" if markdown else "  ".join(parts)

    lines = [fmt(cells[0])]
    if markdown:
        lines.append("|" + "|".join("-" * (n + 1) + (":" if i else "-") for i, n in enumerate(widths)) + "|")
    else:
        lines.append("-" * len(lines[0]))
    lines.extend(fmt(line) for line in cells[1:])
    return "\n".join(lines)


def anomalies(rows: Sequence[Config], num_blocks: int, tolerance: float = 1.2) -> list[str]:
    """MPC rows whose peak exceeds ``tolerance`` x the limit, or is not below back-propagation for ``h < T``."""
    base = rows[0].peak_bytes
    found = []
    for row in rows:
        if row.horizon is None or row.limit_bytes is None:
            continue
        if row.peak_bytes > tolerance * row.limit_bytes:
            found.append(f"{row.label}: peak {row.peak_bytes / row.limit_bytes:.2f} x its limit (> {tolerance})")
        if row.horizon < num_blocks and row.peak_bytes >= base:
            found.append(f"{row.label}: peak {row.peak_bytes / base:.2f} x back-propagation with h < T = {num_blocks}")
    return found


def machine_line(threads: int) -> str:
    """Processor (or architecture), torch version and thread count."""
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        processor = names[0] if names else processor
    except OSError:
        pass
    return f"machine: {processor} | torch {torch.__version__} | {threads} threads"


def report(w: Workload, rows: Sequence[Config], profile: BlockProfile, markdown: bool, cuda: bool) -> str:
    """Title, table, timing spread and anomaly notes of one workload."""
    per_block = ", ".join(f"{b / MIB:.2f}" for b in profile.block_bytes)
    title = f"{w.name}: {len(w.blocks)} blocks, input {tuple(w.x.shape)}; profiled MiB per block: {per_block}"
    notes = anomalies(rows, len(w.blocks))
    base = rows[0].times
    spread = (
        f"back-propagation's {len(base)} timed steps: {min(base) * 1e3:.1f} to {max(base) * 1e3:.1f} ms "
        f"(max/min {max(base) / min(base):.2f}; far above 1 means a busy machine)"
    )
    lines = [f"### {title}" if markdown else title, "", render(table(rows, cuda), markdown), "", spread, ""]
    lines.append("anomalies: none" if not notes else "anomalies:\n" + "\n".join(f"- {n}" for n in notes))
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration first")
    parser.add_argument("--models", default="mlp,resnet18", help="comma-separated: mlp, resnet18")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure every requested model and print one table per model."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    print(machine_line(torch.get_num_threads()) + (f" | {torch.cuda.get_device_name(device)}" if cuda else ""))
    print(f"repeats: {args.repeats} (median), warm-up: {args.warmup}, device: {device}\n")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        workload = make_workload(name, device)
        rows, profile = measure(workload, args.repeats, args.warmup, device)
        print(report(workload, rows, profile, args.markdown, cuda) + "\n")


if __name__ == "__main__":
    main()
