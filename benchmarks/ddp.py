"""Step time and bytes communicated: back-propagation with DDP against MPC with its own gradient averaging.

Run::

    python benchmarks/ddp.py                    # 2 CPU processes, gloo
    python benchmarks/ddp.py --backend nccl     # 2 GPUs

Every configuration runs in the same two processes, side by side, on the same model and batches:

* ``BP + DDP``: ``torch.nn.parallel.DistributedDataParallel`` (bucketed all-reduce overlapped with
  the single backward);
* ``MPC h, sync``: horizon training, every gradient averaged after the step's last window;
* ``MPC h, overlap``: horizon training, each block's and head's gradients all-reduced asynchronously as
  soon as its window closes, while the next blocks compute.

Times are forward + backward + gradient averaging (no optimizer step). The configurations take turns, one
step each per round (:func:`lightning_mpc.bench.interleaved_rounds`, every process in the same order, a
barrier before each step); a ratio to ``BP + DDP`` is the median over rounds of the ratio within a round,
with its interquartile range, and a run whose ``BP + DDP`` steps vary by more than 1.5x is flagged. Bytes are
gradient bytes each process sends into all-reduce per step.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lightning_mpc.bench import Table, interleaved_rounds, local_heads, machine_line, time_call
from lightning_mpc.bench.arguments import horizon_list, positive_int
from lightning_mpc.core.engine import HorizonEngine
from lightning_mpc.core.gradsync import GradientAverager
from lightning_mpc.recipes.networks import mlp_network


def _timed(step: Callable[[], None], device: torch.device) -> float:
    dist.barrier()
    return time_call(step, device=device)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, queue: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(args.threads)
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}") if args.backend == "nccl" else torch.device("cpu")
    torch.manual_seed(0)
    model = mlp_network(args.depth, args.width, batchnorm=False).to(device)
    blocks = list(model)
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 784, generator=generator).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
    heads = local_heads(blocks, x).to(device)
    params = [*model.parameters(), *heads.parameters()]
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)

    def bp_step() -> None:
        ddp.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x), y).backward()

    steps: dict[str, Callable[[], None]] = {"BP + DDP": bp_step}
    averagers: dict[str, GradientAverager] = {}
    for horizon in args.horizons:
        for overlap in (False, True):
            engine = HorizonEngine(blocks, list(heads), horizon)
            averager = GradientAverager(asynchronous=overlap)
            if overlap:
                engine.on_grad_ready = averager.launch

            def mpc_step(engine: HorizonEngine = engine, averager: GradientAverager = averager) -> None:
                for p in params:
                    p.grad = None
                engine.start(lambda prediction: F.cross_entropy(prediction, y))
                out = x
                for index, block in enumerate(blocks):
                    out = engine.block_output(index, block(out))
                engine.finish(F.cross_entropy(out, y))
                averager.finish(params)

            label = f"MPC h={horizon}, {'overlap' if overlap else 'sync'}"
            steps[label], averagers[label] = mpc_step, averager
    for step in steps.values():  # warm-up
        _timed(step, device)
    before = {label: a.bytes_communicated for label, a in averagers.items()}
    timings = interleaved_rounds({label: partial(_timed, step, device) for label, step in steps.items()}, args.rounds)
    sent = {label: (a.bytes_communicated - before[label]) // args.rounds for label, a in averagers.items()}
    sent["BP + DDP"] = sum(p.numel() * p.element_size() for p in model.parameters())
    if rank == 0:
        queue.put((timings, sent))
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--processes", type=positive_int, default=2)
    parser.add_argument("--depth", type=positive_int, default=8)
    parser.add_argument("--width", type=positive_int, default=1024)
    parser.add_argument("--batch", type=positive_int, default=128, help="per process")
    parser.add_argument("--horizons", type=horizon_list, default=[1, 2, 4])
    parser.add_argument("--rounds", type=positive_int, default=10, help="interleaved timing rounds")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads per process")
    args = parser.parse_args(argv)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_worker, args=(args.processes, port, args, queue), nprocs=args.processes, start_method="spawn")
    timings, sent = queue.get()
    torch.set_num_threads(args.threads)  # the machine line reports the workers' thread count
    print(f"machine: {machine_line('cuda' if args.backend == 'nccl' else None)}")
    print(
        f"{args.processes} processes, backend {args.backend}, {args.threads} thread(s) each; {args.depth}-block MLP "
        f"width {args.width}, batch {args.batch} per process; {args.rounds} interleaved rounds"
    )
    print()
    table = Table(["configuration", "step ms (median)", "time / BP+DDP (IQR)", "MiB all-reduced per step"])
    for label in timings.seconds:
        table.add(
            label,
            f"{1e3 * timings.time(label).median:.1f}",
            timings.ratio(label).format(),
            f"{sent[label] / 2**20:.2f}",
        )
    print(table.render(markdown=True))
    print()
    print(timings.noise_note())
    return 0


if __name__ == "__main__":
    sys.exit(main())
