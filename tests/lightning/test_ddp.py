"""MPCDDPStrategy on 2 CPU processes (gloo) against one process on the joint batch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader

import lightning_mpc
from lightning_mpc import MPCDDPStrategy, MPCStrategy, partition
from lightning_mpc.core.gradsync import GradientAverager, broadcast_tensors
from tests.lightning.helpers import Classifier, RankShardSampler, free_port, mlp_net, trainer, vector_data
from tests.models import auto_heads

JOINT_BATCH = 8
SAMPLES = 32


def _module() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(*[m for m in mlp_net() if not isinstance(m, nn.BatchNorm1d)])
    net[0] = nn.Sequential(nn.Linear(6, 16), nn.Tanh())  # no BatchNorm: per-process statistics differ by design
    heads = auto_heads(partition(net), torch.randn(2, 6))
    return Classifier(net=net, heads=heads)


@pytest.mark.parametrize(
    ("horizon", "accumulate", "overlap"),
    [(1, 1, True), (2, 2, True), (2, 1, False)],
)
def test_two_processes_equal_one_process_on_the_joint_batch(horizon: int, accumulate: int, overlap: bool) -> None:
    data = vector_data(n=SAMPLES)
    single, distributed = _module(), _module()
    trainer(strategy=MPCStrategy(horizon=horizon), accumulate_grad_batches=accumulate, max_epochs=2).fit(
        single, DataLoader(data, batch_size=JOINT_BATCH)
    )
    shards = DataLoader(data, batch_size=JOINT_BATCH // 2, sampler=RankShardSampler(SAMPLES, JOINT_BATCH))
    strategy = MPCDDPStrategy(horizon=horizon, overlap_communication=overlap, start_method="spawn")
    trainer(
        strategy=strategy,
        devices=2,
        accumulate_grad_batches=accumulate,
        max_epochs=2,
        use_distributed_sampler=False,
    ).fit(distributed, shards)
    moved = [not torch.equal(p, q) for p, q in zip(single.net.parameters(), _module().net.parameters())]
    assert all(moved)
    for (name, p), q in zip(distributed.net.named_parameters(), single.net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_strategy_names_are_registered() -> None:
    from lightning.pytorch.strategies import StrategyRegistry

    assert {"mpc_ddp", "mpc_ddp_spawn", "mpc_ddp_fork"} <= set(StrategyRegistry)
    assert "ddp" in StrategyRegistry and StrategyRegistry["ddp"]["strategy"].__name__ == "DDPStrategy"
    t = trainer(strategy="mpc_ddp_spawn", devices=2)
    assert isinstance(t.strategy, MPCDDPStrategy) and t.strategy.horizon == 1
    assert lightning_mpc.MPCDDPStrategy is MPCDDPStrategy


def test_wrapper_only_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="ddp_comm_hook.*HINT"):
        MPCDDPStrategy(ddp_comm_hook=lambda *a: None)
    with pytest.warns(UserWarning, match="ignores DistributedDataParallel arguments"):
        MPCDDPStrategy(find_unused_parameters=True)


def _averager_worker(rank: int, world: int, port: int, queue: Any) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for asynchronous in (True, False):
            _average_once(rank, asynchronous, queue)
    finally:
        dist.destroy_process_group()


def _average_once(rank: int, asynchronous: bool, queue: Any) -> None:
    layers = [nn.Linear(3, 4), nn.Linear(4, 2).double()]
    for layer in layers:
        for p in layer.parameters():
            p.grad = torch.full_like(p, float(rank + 1))
    buffer = torch.full((5,), float(rank))
    broadcast_tensors([buffer])
    averager = GradientAverager(asynchronous=asynchronous)
    averager.launch(layers[0].parameters())
    averager.finish([p for layer in layers for p in layer.parameters()])
    grads = [p.grad.tolist() for layer in layers for p in layer.parameters()]  # plain data: no shared memory
    queue.put((asynchronous, rank, grads, buffer.tolist(), averager.bytes_communicated))


def test_gradient_averager_averages_every_bucket() -> None:
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_averager_worker, args=(2, port, queue), nprocs=2, start_method="spawn")
    results = [queue.get() for _ in range(4)]
    assert sorted((a, r) for a, r, *_ in results) == [(False, 0), (False, 1), (True, 0), (True, 1)]
    for _, _, grads, buffer, sent in results:
        assert all(torch.equal(torch.tensor(g), torch.full_like(torch.tensor(g), 1.5)) for g in grads)
        assert buffer == [0.0] * 5
        assert sent == (3 * 4 + 4) * 4 + (4 * 2 + 2) * 8


def test_auto_horizon_and_telemetry_under_two_processes(tmp_path: Any) -> None:
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from tests.lightning.helpers import SameHorizonEverywhere

    data = vector_data(n=SAMPLES)
    shards = DataLoader(data, batch_size=JOINT_BATCH // 2, sampler=RankShardSampler(SAMPLES, JOINT_BATCH))
    strategy = MPCDDPStrategy(horizon="auto", min_alignment=0.5, auto_batches=2, start_method="spawn")
    trainer(
        strategy=strategy,
        devices=2,
        max_steps=4,
        use_distributed_sampler=False,
        logger=CSVLogger(tmp_path, name="run", version=0),
        log_every_n_steps=1,
        callbacks=[SameHorizonEverywhere()],
    ).fit(_module(), shards)
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = {key for row in rows for key, value in row.items() if value}
    assert {f"mpc/block_{k:02d}/loss" for k in range(4)} <= logged
    hparams = (tmp_path / "run" / "version_0" / "hparams.yaml").read_text()
    assert "mpc/horizon" in hparams
