"""Alignment, back-propagation memory and gradient-norm probes, against independent computations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mpc import horizon_backward
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.partition import partition, run_blocks
from lightning_mpc.telemetry import (
    BlockInputCapture,
    RandomState,
    backprop_block_gradients,
    backprop_peak_bytes,
    block_grad_norms,
    first_block_input,
    gradient_alignment,
    measure_alignment,
)
from tests.models import CASES, auto_heads, clone_case, to_double
from tests.reference import reference_gradients


def _flat(grads: list[torch.Tensor | None], params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _independent_alignment(case, horizon: int, mode: str) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    """Cosine of the concatenated horizon gradient (naive reference) with autograd's back-propagation gradient."""
    _, blocks, heads, x, y = clone_case(case)
    mpc, _ = reference_gradients(blocks, list(heads), x, y, F.cross_entropy, horizon, mode)
    model_bp, blocks_bp, _, _, _ = clone_case(case)
    params_bp = [p for b in blocks_bp for p in b.parameters()]
    bp = torch.autograd.grad(F.cross_entropy(run_blocks(blocks_bp, x), y), params_bp, allow_unused=True)
    params = [p for b in blocks for p in b.parameters()]
    mpc_flat = _flat([mpc.get(id(p)) for p in params], params)
    total = _cos(mpc_flat, _flat(list(bp), params_bp))
    per_block, position = [], 0
    for block in blocks:
        n = len(list(block.parameters()))
        if n == 0:
            per_block.append(float("nan"))
            continue
        own = params[position : position + n]
        own_bp = params_bp[position : position + n]
        mpc_own = _flat([mpc.get(id(p)) for p in own], own)
        per_block.append(_cos(mpc_own, _flat(list(bp[position : position + n]), own_bp)))
        position += n
    return total, per_block


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
@pytest.mark.parametrize(("horizon", "mode"), [(1, "sliding"), (2, "sliding"), (2, "block"), (3, "sliding")])
def test_measure_alignment_equals_an_independent_cosine(name: str, horizon: int, mode: str) -> None:
    torch.manual_seed(0)
    case = to_double(CASES[name]())
    model, blocks, heads, x, y = case
    expected_total, expected_blocks = _independent_alignment(case, horizon, mode)
    alignment = measure_alignment(blocks, list(heads), x, y, F.cross_entropy, horizon, mode)
    assert alignment.total == pytest.approx(expected_total, abs=1e-10)
    assert alignment.blocks == pytest.approx(expected_blocks, abs=1e-10, nan_ok=True)
    assert alignment.blocks[-1] == pytest.approx(1.0)  # the last block always learns from the final loss


def test_full_horizon_is_perfectly_aligned_even_with_dropout() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.ReLU()),
        nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.ReLU()),
        nn.Linear(16, 3),
    ).double()
    blocks = partition(net)
    heads = auto_heads(blocks, torch.randn(2, 6).double()).double()
    x, y = torch.randn(8, 6).double(), torch.randint(0, 3, (8,))
    # Same parameters, batch and dropout masks for the horizon run and the back-propagation run: cos = 1.
    alignment = measure_alignment(blocks, list(heads), x, y, F.cross_entropy, horizon=len(blocks))
    assert alignment.total == pytest.approx(1.0, abs=1e-12)
    assert alignment.blocks == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)


def test_probes_leave_grads_buffers_and_random_state_untouched() -> None:
    torch.manual_seed(0)
    model, blocks, heads, x, y = CASES["cnn_bn"]()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads = [p.grad.clone() for p in model.parameters()]
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    measure_alignment(blocks, list(heads), x, y, F.cross_entropy, 2)
    backprop_peak_bytes(blocks, x, y, F.cross_entropy)
    assert torch.equal(torch.get_rng_state(), rng)
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in heads.parameters())


def test_backprop_gradients_from_an_output_gradient_match_a_loss() -> None:
    torch.manual_seed(0)
    _, blocks, heads, x, y = to_double(CASES["mlp"]())
    with_loss = backprop_block_gradients(blocks, list(heads), x, loss=lambda out: F.cross_entropy(out, y))
    out = run_blocks(blocks, x).detach().requires_grad_(True)
    (grad_output,) = torch.autograd.grad(F.cross_entropy(out, y), out)
    with_grad = backprop_block_gradients(blocks, list(heads), x, grad_output=grad_output)
    for a, b in zip(with_loss, with_grad):
        for g, h in zip(a, b):
            torch.testing.assert_close(g, h)
    with pytest.raises(ValueError, match="exactly one"):
        backprop_block_gradients(blocks, list(heads), x)


def test_gradient_alignment_conventions() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    shared = nn.Parameter(torch.zeros(2))
    result = gradient_alignment(
        update=[[a], [None], [], [b], [a]],
        reference=[[a], [b], [], [None], [a]],
        parameters=[[nn.Parameter(torch.zeros(2))] for _ in range(2)] + [[], [nn.Parameter(torch.zeros(2))], [shared]],
    )
    assert result.blocks[0] == pytest.approx(1.0)
    assert result.blocks[1] == 0.0  # no update where back-propagation has a gradient: orthogonal
    assert result.blocks[2] != result.blocks[2]  # no parameters: nan
    assert result.blocks[3] != result.blocks[3]  # zero true gradient: undefined
    # total: concatenation [a, 0, b, a] . [a, b, 0, a] = 2, norms sqrt(1+0+4+1) and sqrt(1+4+0+1)
    assert result.total == pytest.approx(2 / 6)
    twice = gradient_alignment([[a], [a]], [[a], [b]], parameters=[[shared], [shared]])
    assert twice.total == pytest.approx(1.0)  # a parameter shared by two blocks counts once


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "resnet18"])
def test_backprop_peak_bytes_predicts_the_real_peak_of_back_propagation(name: str) -> None:
    from lightning_mpc.core.realmem import measure_peak

    torch.manual_seed(0)
    model, blocks, _, x, y = CASES[name]()
    with preserved_buffers([model]):
        F.cross_entropy(run_blocks(blocks, x), y).backward()  # every .grad allocated, as in the probe
        measured = measure_peak(lambda: F.cross_entropy(run_blocks(blocks, x), y).backward())[1].peak_bytes
    predicted = backprop_peak_bytes(blocks, x, y, F.cross_entropy)
    assert 0.8 <= predicted / measured <= 1.25, f"{name}: predicted {predicted} B, measured {measured} B"


def test_block_grad_norms_match_torch() -> None:
    torch.manual_seed(0)
    model, blocks, heads, x, y = CASES["cnn_bn"]()
    horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 2)
    norms = block_grad_norms(blocks)
    for block, norm in zip(blocks, norms):
        grads = [p.grad for p in block.parameters() if p.grad is not None]
        if not grads:
            assert norm is None
        else:
            expected = torch.cat([g.reshape(-1) for g in grads]).norm()
            torch.testing.assert_close(norm, expected)


def test_first_block_input_stops_before_the_first_block() -> None:
    calls: list[int] = []
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    net[0].register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(5, 8)
    captured = first_block_input(partition(net), lambda: net(x[:, :4] * 2))
    torch.testing.assert_close(captured, x[:, :4] * 2)
    assert not calls, "block 0 must not run"
    with pytest.raises(RuntimeError, match="did not call block 0"):
        first_block_input(partition(net), lambda: None)


def test_block_input_capture_records_input_and_random_state_once() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.Linear(3, 2))
    capture = BlockInputCapture(partition(net))
    x = torch.randn(5, 4)
    net(x)
    assert capture.input is None  # not armed
    capture.arm(random_state=True)
    state = torch.get_rng_state()
    net(x)
    assert capture.input is not None and torch.equal(capture.input, x) and not capture.input.requires_grad
    assert capture.random_state is not None and torch.equal(capture.random_state.cpu, state)
    first = capture.input
    net(torch.randn(5, 4))
    assert capture.input is first  # disarmed after one capture
    with capture.random_state.replay():
        a = torch.rand(3)
    with RandomState(state).replay():
        b = torch.rand(3)
    torch.testing.assert_close(a, b)
    capture.remove()
    capture.arm()
    net(x)
    assert capture.input is None
