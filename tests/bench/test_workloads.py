"""Workloads compose to their model, steps give the gradients they claim, errors name the bad value."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_mpc.bench import (
    backprop_step,
    checkpoint_step,
    checkpointed_forward,
    make_workload,
    mpc_step,
    prepare_gradients,
    sqrt_segment,
    standard_configs,
)
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.partition import run_blocks
from lightning_mpc.recipes.networks import cifar_resnet_depth, mlp_network


def _reference(name: str) -> nn.Module:
    torch.manual_seed(3)
    if name == "mlp-3":
        return mlp_network(num_blocks=3, width=1024)
    if name == "resnet20":
        return cifar_resnet_depth(20)
    return torchvision.models.resnet18(weights=None, num_classes=10)


@pytest.mark.parametrize("name, blocks", [("mlp-3", 3), ("resnet20", 11), ("resnet18", 10)])
def test_blocks_compose_to_the_model(name: str, blocks: int) -> None:
    w = make_workload(name, batch=2, seed=3)
    model = _reference(name).eval()
    for block in w.blocks:
        block.eval()
    assert w.num_blocks == blocks and len(w.heads) == blocks - 1
    with torch.no_grad():
        torch.testing.assert_close(run_blocks(w.blocks, w.x), model(w.x))
    assert w.x.shape[0] == 2 and w.y.shape == (2,)
    assert "batch 2" in w.description


def test_default_batches_and_bad_names() -> None:
    assert make_workload("mlp-2").x.shape == (512, 784)
    with pytest.raises(ValueError, match="Unknown workload 'resnet21'.*HINT"):
        make_workload("resnet21")
    with pytest.raises(ValueError, match="batch 1 is below 2.*HINT"):
        make_workload("mlp", batch=1)


def _grads(w, step) -> list[torch.Tensor]:
    params = [p for b in w.blocks for p in b.parameters()]
    prepare_gradients(w.parameters())
    with preserved_buffers(w.modules()):
        step()
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("name", ["mlp-4", "resnet20"])
def test_checkpointing_and_mpc_at_full_horizon_give_backprop_gradients(name: str) -> None:
    w = make_workload(name, batch=4, seed=1)
    w.blocks = [b.double() for b in w.blocks]
    w.heads = w.heads.double()
    w.x = w.x.double()
    expected = _grads(w, backprop_step(w))
    assert all(g.abs().sum() > 0 for g in expected), "every block parameter learns"
    for step in (checkpoint_step(w, 1), checkpoint_step(w, 3), mpc_step(w, w.num_blocks, "sliding")):
        for got, want in zip(_grads(w, step), expected):
            torch.testing.assert_close(got, want)


def test_standard_configs_and_segments() -> None:
    w = make_workload("mlp-8", batch=2)
    labels = [c.label for c in standard_configs(w, (1, 2), ("sliding",))]
    assert labels == [
        "back-propagation",
        "checkpoint every block",
        "checkpoint every 3 blocks",
        "MPC sliding h=1",
        "MPC sliding h=2",
    ]
    assert [sqrt_segment(t) for t in (2, 8, 16, 32, 56)] == [2, 3, 4, 6, 7]
    with pytest.raises(ValueError, match="segment=0"):
        checkpointed_forward(w.blocks, w.x, 0)
