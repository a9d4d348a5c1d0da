"""Every supported model family: the blocks compose to the model, the hooks see them, the horizon rule trains them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mpc import horizon_backward, partition
from lightning_mpc.core.blocks import run_blocks
from lightning_mpc.core.heads import infer_heads
from lightning_mpc.core.hooks import BlockHooks, OutputShapeRecorder
from lightning_mpc.core.memory import preserved_buffers
from tests.zoo import CLASSES, ZooModel, zoo_params

ZOO = zoo_params()


def _built(entry: ZooModel, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return entry.build()


@pytest.mark.parametrize("entry", ZOO)
def test_blocks_compose_to_the_model_and_hooks_see_each_once(entry: ZooModel) -> None:
    model = _built(entry).eval()
    x = entry.input()
    blocks = partition(model)
    assert len(blocks) >= 3
    # Every parameter belongs to a block (bare ones included), and every block learns.
    assert {id(p) for b in blocks for p in b.parameters()} == {id(p) for p in model.parameters()}
    assert all(any(p.requires_grad for p in b.parameters()) for b in blocks)
    hooks = BlockHooks(blocks)
    recorder = OutputShapeRecorder()
    try:
        with torch.no_grad():
            expected = model(x)
            composed = run_blocks(blocks, x)
            hooks.attach(recorder)
            hooked = model(x)
    finally:
        hooks.remove()
    torch.testing.assert_close(composed, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)
    assert recorder.order == list(range(len(blocks)))
    with torch.no_grad():
        out = x
        for index, block in enumerate(blocks):
            out = block(out)
            torch.testing.assert_close(recorder.outputs[index], out, rtol=1e-5, atol=1e-5)
    assert recorder.outputs[len(blocks) - 1].shape == (x.shape[0], CLASSES)


@pytest.mark.parametrize("entry", ZOO)
def test_horizon_two_gives_every_trainable_parameter_a_gradient(entry: ZooModel) -> None:
    model = _built(entry).train()
    x = entry.input(batch=4)
    y = torch.arange(4) % CLASSES
    blocks = partition(model)
    heads = infer_heads(blocks, x)
    horizon_backward(blocks, list(heads), x, y, F.cross_entropy, horizon=2)
    for name, param in [*model.named_parameters(), *(("head." + n, p) for n, p in heads.named_parameters())]:
        if param.requires_grad:
            assert param.grad is not None, f"{entry.name}: {name} got no gradient"
            assert torch.isfinite(param.grad).all(), f"{entry.name}: {name} has a non-finite gradient"


@pytest.mark.parametrize("entry", ZOO)
def test_full_horizon_equals_backpropagation(entry: ZooModel) -> None:
    model = _built(entry).double().train()
    x = entry.input(batch=4).double()
    y = torch.arange(4) % CLASSES
    reference = copy.deepcopy(model)
    with preserved_buffers([reference]):
        torch.manual_seed(1)  # the same dropout and stochastic-depth draws in both runs
        F.cross_entropy(reference(x), y).backward()
    blocks = partition(model)
    heads = infer_heads(blocks, x).double()
    with preserved_buffers([model]):
        torch.manual_seed(1)
        horizon_backward(blocks, list(heads), x, y, F.cross_entropy, horizon=len(blocks))
    for (name, param), ref in zip(model.named_parameters(), reference.parameters()):
        if ref.grad is None:
            assert param.grad is None or not param.grad.any(), f"{entry.name}: {name}"
            continue
        assert param.grad is not None, f"{entry.name}: {name} got no gradient"
        torch.testing.assert_close(param.grad, ref.grad, rtol=1e-7, atol=1e-9, msg=f"{entry.name}: {name}")
