"""The multi-process backend without Lightning: 2 gloo processes, one slab each, against the sequential backend."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_mpc.rules.pint import DistributedSlabs, pint_backward
from tests.lightning.helpers import free_port
from tests.rules.pint_helpers import CASES, PinTCase

SETTINGS = [(1, "mean"), (3, "first")]
"""(iterations, coarse_weights) run in the same two processes."""


def _gradients(case: PinTCase, iterations: int, weights: str, backend: Any = None) -> tuple[list[list[float]], Any]:
    for p in case.parameters:
        p.grad = None
    result = pint_backward(
        case.blocks, case.x, case.y, case.loss_fn, 2, iterations, coarse_weights=weights, backend=backend
    )
    return [p.grad.flatten().tolist() for p in case.parameters], result


def _worker(rank: int, port: int, queue: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        backend = DistributedSlabs()
        for iterations, weights in SETTINGS:
            case = CASES["conv"]()  # BatchNorm inside the steps: buffers must be shared too
            grads, result = _gradients(case, iterations, weights, backend)
            slabs_run = sorted({(t.rank, t.slab) for t in result.timeline})
            buffers = [b.flatten().tolist() for b in case.buffers]
            queue.put(("run", rank, iterations, grads, buffers, float(result.loss), slabs_run))
        case = CASES["conv"]()
        if rank == 1:
            case.x = case.x + 1.0  # this process got another batch
        try:
            pint_backward(case.blocks, case.x, case.y, case.loss_fn, 2, backend=backend)
        except RuntimeError as error:
            queue.put(("error", rank, str(error)))
        else:
            queue.put(("error", rank, None))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_the_sequential_backend() -> None:
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(port, queue), nprocs=2, start_method="spawn")
    messages = [queue.get() for _ in range(2 * len(SETTINGS) + 2)]
    runs = [m for m in messages if m[0] == "run"]
    for iterations, weights in SETTINGS:
        case = CASES["conv"]()
        expected, result = _gradients(case, iterations, weights)
        expected_buffers = [b.flatten().tolist() for b in case.buffers]
        for _, rank, it, grads, buffers, loss, slabs_run in (r for r in runs if r[2] == iterations):
            assert slabs_run == [(rank, rank)], "each process runs its own slab only"
            for got, want in zip(grads, expected):
                torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-6)
            for got, want in zip(buffers, expected_buffers):
                torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-6)
            assert abs(loss - float(result.loss)) <= 1e-6
    errors = [m for m in messages if m[0] == "error"]
    assert len(errors) == 2
    for _, rank, message in errors:
        assert message is not None and "received different batches" in message and "HINT" in message
