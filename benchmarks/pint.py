"""Parallel-in-time training (``strategy="pint"``) against back-propagation, side by side.

Run::

    python benchmarks/pint.py                      # every part, about 10 minutes on 2 busy CPU cores
    python benchmarks/pint.py --parts cosine speed # some parts

The model is the residual MLP of the recipe (``residual_mlp``: stem, 16 ODE steps of width 128, classifier) on
the bundled MNIST digits (first 8,000 train, last 2,000 evaluate). Every figure is measured in one run of this
script, and times are printed as ratios to back-propagation measured in the same run (the machine is shared):

* ``accuracy``: the same initialisation, batches and Adam settings trained with back-propagation and with pint
  (K slabs, k sweeps; the pure function, whose gradients are those of the Lightning strategy to the bit), for
  equal epochs; evaluation accuracy on the last 2,000 digits.
* ``cosine``: the cosine between pint's gradient and back-propagation's per number of sweeps ``k``, at the
  initialisation and at back-propagation's trained weights (4 batches; float64 dot products).
* ``speed``: one process, one thread. Back-propagation's step and pint's step, alternating; pint's timeline
  gives every slab's fine time, so the critical path K devices would give is modelled as the step's wall time
  minus the slabs' times plus, per sweep, the slowest slab (communication not included).
* ``concurrency``: two processes (gloo, one thread each), one slab each: the timestamps of each process's slab
  passes, their overlap, and the step's wall time against back-propagation in one process, measured in the
  same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.data import BundledMNIST
from lightning_mpc.rules.pint import DistributedSlabs, PinTResult, parallel_in_time, pint_backward, residual_mlp
from lightning_mpc.rules.pint.coarse import DEFAULT_COARSENING

Config = tuple[int, int, int]
"""(slabs K, sweeps k, coarsening)."""


def load_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flattened training and evaluation digits of the bundled set."""
    data = BundledMNIST()
    data.setup()
    assert data.train_set is not None and data.eval_set is not None
    x, y = data.train_set.tensors
    xe, ye = data.eval_set.tensors
    return x.flatten(1), y, xe.flatten(1), ye


def build(args: argparse.Namespace, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return residual_mlp(num_steps=args.steps, width=args.width, horizon=args.horizon)


def bp_step(net: nn.Sequential, x: Tensor, y: Tensor) -> Tensor:
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    return loss.detach()


def pint_step(net: nn.Sequential, x: Tensor, y: Tensor, config: Config, **kwargs: Any) -> PinTResult:
    slabs, sweeps, coarsening = config
    settings = {"coarsening": coarsening} | kwargs
    return pint_backward(list(net), x, y, F.cross_entropy, slabs, sweeps, **settings)


def flat_grad(net: nn.Module) -> Tensor:
    return torch.cat([p.grad.flatten() for p in net.parameters()]).double()


def cosine(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).double().mean()) * 100


def label(config: Config | None) -> str:
    if config is None:
        return "BP"
    suffix = "" if config[2] == DEFAULT_COARSENING else f", coarsening {config[2]}"
    return f"pint K={config[0]}, k={config[1]}{suffix}"


# ----------------------------------------------------------------------------- accuracy
def train(
    args: argparse.Namespace, seed: int, config: Config | None, data: Sequence[Tensor]
) -> tuple[float, nn.Module]:
    x, y, xe, ye = data
    net = build(args, seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        perm = torch.randperm(len(x), generator=order)
        for start in range(0, len(x), args.batch_size):
            idx = perm[start : start + args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            if config is None:
                bp_step(net, x[idx], y[idx])
            else:
                pint_step(net, x[idx], y[idx], config)
            optimizer.step()
    return accuracy(net, xe, ye), net


def part_accuracy(args: argparse.Namespace, data: Sequence[Tensor]) -> dict[int, nn.Module]:
    configs: list[Config | None] = [None, *args.configs]
    results: dict[str, list[float]] = {label(c): [] for c in configs}
    trained: dict[int, nn.Module] = {}
    for seed in args.seeds:
        for config in configs:
            acc, net = train(args, seed, config, data)
            results[label(config)].append(acc)
            if config is None:
                trained[seed] = net
    print(f"\n### Accuracy: {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, seeds {args.seeds}\n")
    print("| method | eval accuracy (%) per seed | mean | mean - BP (points) |")
    print("|---|---|---:|---:|")
    bp = statistics.mean(results["BP"])
    for name, accs in results.items():
        mean = statistics.mean(accs)
        print(f"| {name} | {', '.join(f'{a:.2f}' for a in accs)} | {mean:.2f} | {mean - bp:+.2f} |")
    return trained


# ----------------------------------------------------------------------------- cosine
COSINE_VARIANTS = [
    ("", {}, None),
    (" (coarse_weights='first')", {"coarse_weights": "first"}, 2),
    (" (coarsening=16: one coarse step per slab)", {"coarsening": 16}, 1),
]
"""Row suffix, pint settings, and the largest number of sweeps shown (``None``: up to 2K - 1)."""


def part_cosine(args: argparse.Namespace, data: Sequence[Tensor], trained: dict[int, nn.Module]) -> None:
    x, y = data[0], data[1]
    seed = args.seeds[0]
    nets = {"init": build(args, seed)}
    if seed in trained:
        nets["trained (BP)"] = trained[seed]
    size = args.batch_size
    batches = [(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(4)]
    slab_counts = sorted({c[0] for c in args.configs})
    rows: dict[tuple[int, int], dict[str, float]] = {}
    for name, net in nets.items():
        for xb, yb in batches:
            net.zero_grad(set_to_none=True)
            bp_step(net, xb, yb)
            reference = flat_grad(net)
            for K in slab_counts:
                for variant, (_, settings, most) in enumerate(COSINE_VARIANTS):
                    for k in range(1, (most or 2 * K - 1) + 1):
                        net.zero_grad(set_to_none=True)
                        pint_step(net, xb, yb, (K, k, DEFAULT_COARSENING), **settings)
                        column = rows.setdefault((variant, k), {})
                        key = f"K={K}, {name}"
                        column[key] = column.get(key, 0.0) + cosine(flat_grad(net), reference) / len(batches)
    columns = [f"K={K}, {name}" for K in slab_counts for name in nets]
    print("\n### Cosine to back-propagation's gradient (mean of 4 training batches; coarsening 4 unless said)\n")
    print("| sweeps | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for variant, k in sorted(rows):
        cells = " | ".join(f"{rows[(variant, k)][c]:.6f}" if c in rows[(variant, k)] else "" for c in columns)
        print(f"| k = {k}{COSINE_VARIANTS[variant][0]} | {cells} |")


# ----------------------------------------------------------------------------- speed (model)
def _timed(run: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, this process's CPU seconds, and the result of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def critical_path(step_cpu: float, result: PinTResult) -> tuple[float, float]:
    """The step's CPU time with every sweep's slabs in parallel: serial work plus the slowest slab of each sweep.

    Returns:
        ``(critical path, slowest slab pass)`` in CPU seconds.
    """
    per_sweep: dict[int, list[float]] = {}
    for t in result.timeline:
        per_sweep.setdefault(t.sweep, []).append(t.cpu)
    slabs = sum(t.cpu for t in result.timeline)
    slowest = [max(times) for times in per_sweep.values()]
    return step_cpu - slabs + sum(slowest), max(slowest)


def _speed_table(
    title: str, bp: Callable[[], Any], pint: Callable[[Config], PinTResult], configs: Sequence[Config], repeats: int
) -> None:
    bp_cpu: list[float] = []
    rows: dict[Config, list[tuple[float, float, float]]] = {c: [] for c in configs}
    for repeat in range(repeats + 1):
        _, cpu, _ = _timed(bp)
        if repeat:
            bp_cpu.append(cpu)
        for config in configs:
            _, cpu, result = _timed(lambda: pint(config))
            if repeat:
                rows[config].append((cpu, *critical_path(cpu, result)))
    reference = statistics.median(bp_cpu)
    print(f"\n{title}\n")
    print("| method | sequential step / BP | modelled critical path on K devices / BP | slowest slab pass / BP |")
    print("|---|---:|---:|---:|")
    print("| BP | 1.00 | 1.00 | |")
    for config in configs:
        sequential, modelled, slab = (statistics.median(v[i] for v in rows[config]) for i in range(3))
        ratios = " | ".join(f"{value / reference:.2f}" for value in (sequential, modelled, slab))
        print(f"| {label(config)} | {ratios} |")


def part_speed(args: argparse.Namespace, data: Sequence[Tensor]) -> None:
    x, y = data[0][: args.speed_batch], data[1][: args.speed_batch]
    net = build(args, args.seeds[0])
    blocks = list(net)
    stem, steps, head = blocks[0], blocks[1:-1], blocks[-1:]
    x0 = stem(x).detach()

    def whole_bp() -> None:
        net.zero_grad(set_to_none=True)
        bp_step(net, x, y)

    def whole_pint(config: Config) -> PinTResult:
        net.zero_grad(set_to_none=True)
        return pint_step(net, x, y, config)

    def steps_bp() -> None:
        net.zero_grad(set_to_none=True)
        out = x0.requires_grad_(True)
        for block in (*steps, *head):
            out = block(out)
        F.cross_entropy(out, y).backward()

    def steps_pint(config: Config) -> PinTResult:
        net.zero_grad(set_to_none=True)
        loss = lambda out: F.cross_entropy(out, y)
        slabs, sweeps, coarsening = config
        return parallel_in_time(steps, x0, head, loss, slabs, sweeps, coarsening=coarsening)  # type: ignore[arg-type]

    common = f"one process, one thread, batch {args.speed_batch}, CPU time, medians of {args.repeats} alternating steps"
    _speed_table(f"### Speed model, whole network ({common})", whole_bp, whole_pint, args.configs, args.repeats)
    _speed_table(
        f"### Speed model, the ODE steps and classifier only, stem excluded ({common})",
        steps_bp,
        steps_pint,
        args.configs,
        args.repeats,
    )


# ----------------------------------------------------------------------------- concurrency (2 processes)
def _worker(rank: int, port: int, args: argparse.Namespace, queue: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x, y = load_digits()[:2]
        x, y = x[: args.concurrency_batch], y[: args.concurrency_batch]
        net = build(args, args.seeds[0])
        backend = DistributedSlabs()
        rounds = []
        for repeat in range(args.repeats + 1):
            dist.barrier()  # pint on both processes, one slab each
            net.zero_grad(set_to_none=True)
            wall, cpu, result = _timed(lambda: pint_step(net, x, y, (2, 1, DEFAULT_COARSENING), backend=backend))
            dist.barrier()  # back-propagation on rank 0 while rank 1 waits
            bp_wall = bp_cpu = float("nan")
            if rank == 0:
                net.zero_grad(set_to_none=True)
                bp_wall, bp_cpu, _ = _timed(lambda: bp_step(net, x, y))
            dist.barrier()
            if repeat:
                (slab,) = result.timeline
                rounds.append((wall, cpu, bp_wall, bp_cpu, (slab.slab, slab.start, slab.end, slab.cpu)))
        queue.put((rank, rounds))
    finally:
        dist.destroy_process_group()


def part_concurrency(args: argparse.Namespace) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(port, args, queue), nprocs=2, start_method="spawn")
    by_rank = dict(queue.get() for _ in range(2))
    overlaps, walls, cpus, bp_walls, bp_cpus, busy = [], [], [], [], [], []
    first = None
    for r0, r1 in zip(by_rank[0], by_rank[1]):
        (_, a_start, a_end, a_cpu), (_, b_start, b_end, b_cpu) = r0[4], r1[4]
        overlap = max(0.0, min(a_end, b_end) - max(a_start, b_start))
        overlaps.append(overlap / max(a_end - a_start, b_end - b_start))
        busy += [a_cpu / (a_end - a_start), b_cpu / (b_end - b_start)]
        walls.append(max(r0[0], r1[0]))
        cpus.append(max(r0[1], r1[1]))
        bp_walls.append(r0[2])
        bp_cpus.append(r0[3])
        if first is None:
            origin = min(a_start, b_start)
            first = (r0[4][0], a_start - origin, a_end - origin, r1[4][0], b_start - origin, b_end - origin)
    print(
        f"\n### Two processes on this machine (gloo, one thread each, K = 2, k = 1, batch {args.concurrency_batch}, "
        f"{args.repeats} steps)\n"
    )
    print("| measure | value |")
    print("|---|---:|")
    print(f"| steps whose two slab passes overlap in time | {sum(o > 0 for o in overlaps)} of {len(overlaps)} |")
    print(f"| overlap / longer slab pass (median) | {statistics.median(overlaps):.2f} |")
    print(f"| CPU time / wall time of a slab pass (median over both processes) | {statistics.median(busy):.2f} |")
    print(f"| pint step on 2 processes / BP step on 1 process, wall time (median) | "
          f"{statistics.median(walls) / statistics.median(bp_walls):.2f} |")
    cpu_ratio = statistics.median(cpus) / statistics.median(bp_cpus)
    print(f"| the same in CPU time of the busier process | {cpu_ratio:.2f} |")
    if first is not None:
        s0, a0, e0, s1, a1, e1 = first
        print(
            f"\nFirst measured step, seconds from the earlier start: slab {s0} on rank 0 ran {a0:.4f} to {e0:.4f}, "
            f"slab {s1} on rank 1 ran {a1:.4f} to {e1:.4f}."
        )


def parse_config(text: str) -> Config:
    """``"4x2"`` -> ``(4, 2, 4)``; ``"2x1c16"`` -> ``(2, 1, 16)``."""
    main, _, coarsening = text.partition("c")
    slabs, sweeps = (int(v) for v in main.split("x"))
    return slabs, sweeps, int(coarsening) if coarsening else DEFAULT_COARSENING


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["accuracy", "cosine", "speed", "concurrency"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--horizon", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["2x1", "4x1", "4x2"],
        help="K x sweeps, optionally c coarsening: 4x2, 2x1c16 (default coarsening 4)",
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--speed-batch", type=int, default=512)
    parser.add_argument("--concurrency-batch", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.configs = [parse_config(c) for c in args.configs]
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(
        f"Residual MLP: stem, {args.steps} ODE steps of width {args.width} (dt = {args.horizon / args.steps:g}), "
        f"classifier; bundled MNIST digits; torch threads {args.threads}."
    )
    data = load_digits()
    trained: dict[int, nn.Module] = {}
    if "accuracy" in args.parts:
        trained = part_accuracy(args, data)
    if "cosine" in args.parts:
        part_cosine(args, data, trained)
    if "speed" in args.parts:
        part_speed(args, data)
    if "concurrency" in args.parts:
        part_concurrency(args)


if __name__ == "__main__":
    main()
