"""Activation memory of the interleaved schedule against the window limit and back-propagation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mpc import SavedTensorMeter, horizon_backward, profile_blocks
from lightning_mpc.core.memory import preserved_buffers
from tests.models import CASES


def _params(*groups: list[nn.Module]) -> list[torch.Tensor]:
    return [p for group in groups for m in group for p in m.parameters()]


def _mpc_peak(blocks: list[nn.Module], heads: nn.ModuleList, x: torch.Tensor, y: torch.Tensor, h: int, mode: str) -> int:
    meter = SavedTensorMeter(exclude=_params(blocks, list(heads)))
    with preserved_buffers(blocks), meter:
        horizon_backward(blocks, list(heads), x, y, F.cross_entropy, h, mode)
    assert meter.current_bytes == 0, "a graph outlived horizon_backward"
    return meter.peak_bytes


def _backprop_peak(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    meter = SavedTensorMeter(exclude=model.parameters())
    with preserved_buffers([model]), meter:
        F.cross_entropy(model(x), y).backward()
    return meter.peak_bytes


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "resnet18"])
@pytest.mark.parametrize("mode", ["sliding", "block"])
@pytest.mark.parametrize("horizon", [1, 2, 3])
def test_peak_is_within_the_window_limit(name: str, horizon: int, mode: str) -> None:
    torch.manual_seed(0)
    model, blocks, heads, x, y = CASES[name]()
    profile = profile_blocks(blocks, list(heads), x, y, F.cross_entropy)
    limit = profile.window_limit(horizon, mode)
    peak = _mpc_peak(blocks, heads, x, y, horizon, mode)
    assert peak <= 1.2 * limit, f"peak {peak} B exceeds 1.2 x window limit {limit} B"
    # The limit is tight: the schedule really holds a full window at some point.
    assert peak >= 0.95 * limit
    backprop = _backprop_peak(model, x, y)
    assert peak < backprop, f"h={horizon} holds {peak} B, back-propagation {backprop} B"
    assert backprop == profile.backprop_bytes


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_memory_grows_with_horizon_and_reaches_backprop(name: str) -> None:
    torch.manual_seed(0)
    model, blocks, heads, x, y = CASES[name]()
    peaks = [_mpc_peak(blocks, heads, x, y, h, "sliding") for h in range(1, len(blocks) + 1)]
    assert peaks == sorted(peaks)
    backprop = _backprop_peak(model, x, y)
    # h = T holds everything back-propagation holds, plus at most the local heads' small graphs.
    assert backprop <= peaks[-1] <= 1.1 * backprop


def test_meter_counts_shared_storages_once() -> None:
    x = torch.randn(100, requires_grad=True)
    meter = SavedTensorMeter()
    with meter:
        y = x.exp()  # saves its output
        z = (y * y).sum()  # saves y twice
    # exp saves its output y; the product saves y twice: one storage of 100 floats in all.
    assert meter.current_bytes == 100 * 4
    with meter:
        w = x.sin()  # saves x: a second storage
    assert meter.current_bytes == 2 * 100 * 4
    del y, z, w
    assert meter.current_bytes == 0
    assert meter.peak_bytes == 800


def test_meter_excludes_parameters() -> None:
    layer = nn.Linear(50, 50, bias=False)
    x = torch.randn(4, 50)
    meter = SavedTensorMeter(exclude=layer.parameters())
    with meter:
        out = layer(x)
    assert meter.current_bytes == x.numel() * 4
    del out


def test_profile_leaves_batchnorm_statistics_alone() -> None:
    _, blocks, heads, x, y = CASES["cnn_bn"]()
    before = [b.clone() for m in blocks for b in m.buffers()]
    profile_blocks(blocks, list(heads), x, y, F.cross_entropy)
    for b, a in zip(before, [b for m in blocks for b in m.buffers()]):
        torch.testing.assert_close(a, b)
