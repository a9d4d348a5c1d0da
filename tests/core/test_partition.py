"""partition(): the blocks compose to the model, for every supported family."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_mpc import BlockSpan, partition
from lightning_mpc.core.hooks import BlockHooks, OutputShapeRecorder
from lightning_mpc.core.partition import hook_points, run_blocks

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"]


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_blocks_compose_to_the_model(name: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=7).eval()
    blocks = partition(model)
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert len(blocks) == 2 + sum(len(layer) for layer in layers)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_blocks(blocks, x), model(x), rtol=0, atol=0)
    # The blocks share the model's parameters; nothing is copied.
    block_params = {id(p) for b in blocks for p in b.parameters()}
    assert block_params == {id(p) for p in model.parameters()}


def test_resnet_hooks_see_every_block_in_order_during_the_models_own_forward() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    blocks = partition(model)
    hooks = BlockHooks(blocks)
    recorder = OutputShapeRecorder()
    hooks.attach(recorder)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        hooks.attach(None)
        expected = x
        for index, block in enumerate(blocks):
            expected = block(expected)
            torch.testing.assert_close(recorder.outputs[index], expected)
    assert recorder.order == list(range(len(blocks)))
    torch.testing.assert_close(out, expected)
    hooks.remove()


def test_resnet_stem_and_classifier_spans() -> None:
    model = torchvision.models.resnet18(weights=None)
    blocks = partition(model)
    assert isinstance(blocks[0], BlockSpan) and hook_points(blocks[0]) == (model.conv1, model.maxpool)
    assert isinstance(blocks[-1], BlockSpan) and hook_points(blocks[-1]) == (model.avgpool, model.fc)
    assert hook_points(blocks[1]) == (model.layer1[0], model.layer1[0])


def test_sequential_children_are_the_blocks() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
    assert partition(model) == list(model.children())
    x = torch.randn(5, 3)
    torch.testing.assert_close(run_blocks(partition(model), x), model(x))


def test_unsupported_module_error_says_how_to_supply_blocks() -> None:
    with pytest.raises(TypeError, match="Cannot partition a Linear.*HINT: pass a list of submodules"):
        partition(nn.Linear(2, 2))


def test_empty_sequential_is_refused() -> None:
    with pytest.raises(ValueError, match="empty nn.Sequential"):
        partition(nn.Sequential())
