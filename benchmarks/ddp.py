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

Times are medians of forward + backward + gradient averaging (no optimizer step), printed as ratios to
``BP + DDP`` measured in the same run. Bytes are gradient bytes each process sends into all-reduce per step.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lightning_mpc.core.engine import HorizonEngine
from lightning_mpc.core.gradsync import GradientAverager
from lightning_mpc.core.heads import build_heads, infer_head_spec


def build_mlp(depth: int, width: int, classes: int = 10) -> nn.Sequential:
    """An MLP of ``depth`` blocks (the last is the classifier)."""
    blocks: list[nn.Module] = [nn.Sequential(nn.Linear(784, width), nn.ReLU())]
    blocks += [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth - 2)]
    blocks.append(nn.Linear(width, classes))
    return nn.Sequential(*blocks)


def _time(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    samples = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples[1:])


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, queue: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(args.threads)
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}") if args.backend == "nccl" else torch.device("cpu")
    torch.manual_seed(0)
    model = build_mlp(args.depth, args.width).to(device)
    blocks = list(model)
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 784, generator=generator).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
    with torch.no_grad():
        shapes, h = [], x
        for block in blocks:
            h = block(h)
            shapes.append(h.shape)
    heads = build_heads([infer_head_spec(i, shapes[i], shapes[-1]) for i in range(len(blocks) - 1)]).to(device)
    params = [*model.parameters(), *heads.parameters()]
    results: dict[str, tuple[float, int]] = {}

    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)

    def bp_step() -> None:
        ddp.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x), y).backward()

    results["BP + DDP"] = (_time(bp_step, args.repeats, device), sum(p.numel() * p.element_size() for p in model.parameters()))

    for horizon in args.horizons:
        for overlap in (False, True):
            engine = HorizonEngine(blocks, list(heads), horizon)
            averager = GradientAverager(asynchronous=overlap)
            if overlap:
                engine.on_grad_ready = lambda module: averager.launch(module.parameters())

            def mpc_step() -> None:
                for p in params:
                    p.grad = None
                engine.start(lambda prediction: F.cross_entropy(prediction, y))
                out = x
                for index, block in enumerate(blocks):
                    out = engine.block_output(index, block(out))
                engine.finish(F.cross_entropy(out, y))
                averager.finish(params)

            before = averager.bytes_communicated
            elapsed = _time(mpc_step, args.repeats, device)
            per_step = (averager.bytes_communicated - before) // (args.repeats + 1)
            results[f"MPC h={horizon}, {'overlap' if overlap else 'sync'}"] = (elapsed, per_step)
    if rank == 0:
        queue.put(results)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128, help="per process")
    parser.add_argument("--horizons", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_worker, args=(args.processes, port, args, queue), nprocs=args.processes, start_method="spawn")
    results = queue.get()
    base_time = results["BP + DDP"][0]
    print(
        f"{args.processes} processes, backend {args.backend}, torch {torch.__version__}, {args.threads} thread(s) each; "
        f"{args.depth}-block MLP width {args.width}, batch {args.batch} per process; median of {args.repeats} steps"
    )
    print()
    print("| configuration | step ms | time / BP+DDP | MiB all-reduced per step |")
    print("|---|---:|---:|---:|")
    for name, (elapsed, sent) in results.items():
        print(f"| {name} | {elapsed * 1e3:.1f} | {elapsed / base_time:.2f} | {sent / 2**20:.2f} |")


if __name__ == "__main__":
    main()
