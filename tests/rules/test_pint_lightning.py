"""``strategy="pint"`` inside Lightning: the flag, one step against the pure function, accumulation, and
two gloo processes (one slab each) against the sequential backend."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.strategies import StrategyRegistry
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import lightning_mpc
from lightning_mpc import PinTRule, PinTStrategy, RuleSetup, RuleStrategy, available_rules, pint_backward, residual_mlp
from lightning_mpc.rules.pint import DistributedSlabs, ResidualStep
from tests.lightning.helpers import Classifier, loader, trainer, vector_data


def _module(batchnorm: bool = False) -> Classifier:
    torch.manual_seed(0)
    net = residual_mlp(num_steps=6, width=8, in_features=6, num_classes=3, horizon=1.5)
    if batchnorm:  # BatchNorm inside the steps: their statistics must move as in one step, on every process
        for block in net:
            if isinstance(block, ResidualStep):
                block.f = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh())
    return Classifier(net=net)


class _Gradients(L.Callback):
    """Every parameter's gradient at every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.steps.append([p.grad.detach().clone() for p in pl_module.parameters()])


def test_strategy_flags_and_exports() -> None:
    assert "pint" in available_rules()
    for flag in ("pint", "pint_spawn", "pint_fork"):
        assert StrategyRegistry[flag]["strategy"] is PinTStrategy
    assert "pint_ddp" not in StrategyRegistry  # parallel across time, not data
    assert lightning_mpc.PinTStrategy is PinTStrategy and lightning_mpc.PinTRule is PinTRule
    strategy = trainer(strategy="pint_spawn", devices=2).strategy
    assert isinstance(strategy, PinTStrategy) and strategy.pint.iterations == 1
    assert strategy.distributed_sampler_kwargs == {"num_replicas": 1, "rank": 0}


@pytest.mark.parametrize(("slabs", "iterations", "batchnorm"), [(3, 2, False), (2, 1, True)])
def test_a_step_writes_the_pure_functions_gradients(slabs: int, iterations: int, batchnorm: bool) -> None:
    data = loader(vector_data())
    x, y = next(iter(data))
    expected_module = _module(batchnorm)
    expected = pint_backward(list(expected_module.net), x, y, F.cross_entropy, slabs, iterations)
    module, probe = _module(batchnorm), _Gradients()
    logged: list[float] = []

    class _Loss(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, *args: Any) -> None:
            logged.append(float(outputs["loss"]))

    t = trainer(strategy=RuleStrategy(rule=PinTRule(slabs, iterations)), max_steps=1, callbacks=[probe, _Loss()])
    t.fit(module, data)
    for got, want in zip(probe.steps[0], (p.grad for p in expected_module.parameters())):
        assert torch.equal(got, want)
    assert logged == [pytest.approx(float(expected.loss), abs=0, rel=1e-12)]  # the loss reported is the one trained on
    for got, want in zip(module.buffers(), expected_module.buffers()):
        assert torch.equal(got, want), "buffers move once per step, as under back-propagation"
    assert t.strategy.rule.describe()["backend"] == "sequential"


def test_gradient_accumulation_adds_scaled_steps() -> None:
    data = loader(vector_data(n=16))
    batches = list(data)
    expected_module = _module()
    for x, y in batches:
        pint_backward(list(expected_module.net), x, y, F.cross_entropy, 2, 2, scale=lambda loss: loss / 2)
    module, probe = _module(), _Gradients()
    trainer(strategy=RuleStrategy(rule=PinTRule(2, 2)), max_steps=1, accumulate_grad_batches=2, callbacks=[probe]).fit(
        module, data
    )
    for got, want in zip(probe.steps[0], (p.grad for p in expected_module.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_slabs_must_match_the_processes() -> None:
    module = _module()
    context = RuleSetup(module, list(module.net), [], None, torch.device("cpu"), torch.float32, world_size=2)
    with pytest.raises(ValueError, match="one slab per process.*HINT"):
        PinTRule(slabs=3).setup(context)
    with pytest.raises(TypeError, match="takes a PinTRule.*HINT"):
        PinTStrategy(rule=lightning_mpc.MPCRule())  # type: ignore[arg-type]


def test_one_device_runs_the_slabs_in_turn() -> None:
    module = _module()
    t = trainer(strategy="pint", devices=1, max_steps=2)
    t.fit(module, loader(vector_data()))
    rule = t.strategy.pint
    assert rule.num_slabs == 2 and rule.last_result is not None
    assert rule.describe()["backend"] == "sequential"
    assert not dist.is_initialized(), "one process needs no process group"
    t.validate(module, loader(vector_data()), verbose=False)


def test_two_processes_equal_the_sequential_backend() -> None:
    # Every process must see every batch: the strategy's sampler (one replica, shuffled, seeded) is rebuilt here
    # for the sequential run, which Lightning does not give a distributed sampler.
    data = vector_data(n=32)
    sequential = _module(batchnorm=True)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    shuffled = DataLoader(data, batch_size=8, sampler=sampler)
    trainer(strategy=RuleStrategy(rule=PinTRule(slabs=2, iterations=2)), max_epochs=2).fit(sequential, shuffled)
    distributed = _module(batchnorm=True)
    strategy = PinTStrategy(iterations=2, start_method="spawn")
    trainer(strategy=strategy, devices=2, max_epochs=2).fit(distributed, DataLoader(data, batch_size=8, shuffle=True))
    initial = _module(batchnorm=True)
    moved = [n for (n, p), q in zip(sequential.named_parameters(), initial.parameters()) if not torch.equal(p, q)]
    assert {n for n, _ in sequential.named_parameters() if n.endswith("weight")} <= set(moved)  # biases before BN: 0
    for (name, p), q in zip(distributed.named_parameters(), sequential.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
    for (name, b), c in zip(distributed.named_buffers(), sequential.named_buffers()):
        torch.testing.assert_close(b, c[1], rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_distributed_backend_needs_a_process_group() -> None:
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="initialised torch.distributed.*HINT"):
        DistributedSlabs()
