"""horizon_backward against the naive reference, on fixed and generated architectures."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_mpc import horizon_backward, partition
from lightning_mpc.core.engine import HorizonEngine
from tests.models import CASES, Case, auto_heads, clone_case, to_double, transformer_tokens
from tests.reference import reference_gradients


def _zero(modules: list[nn.Module | None]) -> None:
    for module in modules:
        if module is not None:
            module.zero_grad(set_to_none=True)


def assert_matches_reference(case: Case, horizon: int, mode: str, rtol: float = 1e-5) -> None:
    """Gradients and BatchNorm statistics of horizon_backward equal the reference's."""
    model, blocks, heads, x, y = case
    ref_model, ref_blocks, ref_heads, _, _ = clone_case(case)
    expected, expected_loss = reference_gradients(ref_blocks, list(ref_heads), x, y, F.cross_entropy, horizon, mode)

    _zero([*blocks, *heads])
    loss = horizon_backward(blocks, list(heads), x, y, F.cross_entropy, horizon, mode)
    assert not loss.requires_grad and torch.isfinite(loss)
    torch.testing.assert_close(loss, expected_loss, rtol=rtol, atol=1e-12)

    pairs = [
        (p, q)
        for mod, ref in [*zip(blocks, ref_blocks), *zip(heads, ref_heads)]
        for p, q in zip(mod.parameters(), ref.parameters())
    ]
    for (name, p), (_, q) in zip(_named([*blocks, *heads]), pairs):
        g_ref = expected.get(id(q))
        assert p.grad is not None, f"{name} received no gradient"
        if g_ref is None:
            torch.testing.assert_close(p.grad, torch.zeros_like(p.grad))
        else:
            torch.testing.assert_close(p.grad, g_ref, rtol=rtol, atol=1e-10, msg=lambda m: f"{name}: {m}")
    # BatchNorm statistics moved exactly as in one forward pass (the reference ran one).
    for b, rb in zip(model.buffers(), ref_model.buffers()):
        torch.testing.assert_close(b, rb)


def _named(modules: list[nn.Module]) -> list[tuple[str, nn.Parameter]]:
    return [(f"{i}.{n}", p) for i, m in enumerate(modules) for n, p in m.named_parameters()]


@pytest.mark.parametrize("mode", ["sliding", "block"])
@pytest.mark.parametrize("horizon", [1, 2, 3, "T"])
@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "resnet18", "resnet50"])
def test_matches_naive_reference(name: str, horizon: int | str, mode: str) -> None:
    torch.manual_seed(0)
    case = to_double(CASES[name]())
    h = len(case[1]) if horizon == "T" else horizon
    assert_matches_reference(case, h, mode)


@pytest.mark.parametrize("mode", ["sliding", "block"])
def test_token_heads_match_reference(mode: str) -> None:
    torch.manual_seed(1)
    assert_matches_reference(to_double(transformer_tokens()), 2, mode)


@pytest.mark.parametrize("mode", ["sliding", "block"])
def test_horizon_beyond_depth_is_backpropagation(mode: str) -> None:
    torch.manual_seed(2)
    model, blocks, heads, x, y = to_double(CASES["mlp"]())
    bp = copy.deepcopy(model)
    F.cross_entropy(bp(x), y).backward()
    horizon_backward(blocks, list(heads), x, y, F.cross_entropy, horizon=100, mode=mode)
    for p, q in zip(model.parameters(), bp.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)


def test_local_rule_is_the_same_in_both_modes() -> None:
    torch.manual_seed(3)
    case = to_double(CASES["cnn_bn"]())
    other = clone_case(case)
    for (_, blocks, heads, x, y), mode in [(case, "sliding"), (other, "block")]:
        horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 1, mode)
    for p, q in zip(case[0].parameters(), other[0].parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_identity_heads_apply_the_loss_to_block_outputs() -> None:
    torch.manual_seed(4)
    width = 5
    model = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(3)], nn.Linear(width, width))
    model.double()
    x, y = torch.randn(6, width, dtype=torch.float64), torch.randint(0, width, (6,))
    blocks = partition(model)
    case = (model, blocks, nn.ModuleList([nn.Identity(), nn.Identity(), nn.Identity()]), x, y)
    for horizon in (1, 2):
        _zero(blocks)
        assert_matches_reference(case, horizon, "sliding")


def test_gradients_accumulate_like_backward() -> None:
    torch.manual_seed(5)
    _, blocks, heads, x, y = to_double(CASES["mlp"]())
    horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 2)
    once = [p.grad.clone() for b in blocks for p in b.parameters()]
    horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 2)
    for g, p in zip(once, [p for b in blocks for p in b.parameters()]):
        torch.testing.assert_close(p.grad, 2 * g)


def test_scale_multiplies_every_gradient() -> None:
    torch.manual_seed(6)
    case = to_double(CASES["mlp"]())
    other = clone_case(case)
    horizon_backward(case[1], list(case[2]), case[3], case[4], F.cross_entropy, 2)
    horizon_backward(other[1], list(other[2]), other[3], other[4], F.cross_entropy, 2, scale=lambda loss: loss * 0.25)
    for p, q in zip([*case[0].parameters(), *case[2].parameters()], [*other[0].parameters(), *other[2].parameters()]):
        torch.testing.assert_close(q.grad, 0.25 * p.grad)


def test_frozen_parameters_get_no_gradient() -> None:
    torch.manual_seed(7)
    _, blocks, heads, x, y = CASES["mlp"]()
    frozen = blocks[1][0].weight
    frozen.requires_grad_(False)
    horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 2)
    assert frozen.grad is None
    assert blocks[0][0].weight.grad is not None


def test_no_graph_survives_the_call() -> None:
    torch.manual_seed(8)
    _, blocks, heads, x, y = CASES["mlp"]()
    from lightning_mpc import SavedTensorMeter

    meter = SavedTensorMeter(exclude=[p for m in [*blocks, *heads] for p in m.parameters()])
    with meter:
        horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 3)
    assert meter.peak_bytes > 0
    assert meter.current_bytes == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"horizon": 0}, "horizon must be >= 1"), ({"horizon": 1.5}, "integer"), ({"mode": "tbptt"}, "mode must be one of")],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    _, blocks, heads, x, y = CASES["mlp"]()
    args = {"horizon": 2, "mode": "sliding"} | kwargs
    with pytest.raises(ValueError, match=message):
        horizon_backward(blocks, list(heads), x, y, F.cross_entropy, **args)


def test_wrong_number_of_heads_is_explained() -> None:
    _, blocks, heads, x, y = CASES["mlp"]()
    with pytest.raises(ValueError, match=r"Expected 5 heads for 6 blocks"):
        horizon_backward(blocks, list(heads)[:-1], x, y, F.cross_entropy, 2)


def test_out_of_order_blocks_are_reported() -> None:
    _, blocks, heads, x, y = CASES["mlp"]()
    engine = HorizonEngine(blocks, list(heads), 2)
    engine.start(lambda p: F.cross_entropy(p, y))
    engine.block_output(0, blocks[0](x))
    with pytest.raises(RuntimeError, match="Block 2 .* ran out of order: expected block 1"):
        engine.block_output(2, torch.zeros(8, 16))


# ------------------------------------------------------------------ generated architectures
_LAYERS = ["linear", "relu", "tanh", "layernorm", "batchnorm", "linear_gelu", "identity"]


@st.composite
def sequential_stacks(draw: st.DrawFn) -> tuple[nn.Sequential, int]:
    in_features = draw(st.integers(2, 6))
    width = in_features
    layers: list[nn.Module] = []
    for kind in draw(st.lists(st.sampled_from(_LAYERS), min_size=1, max_size=7)):
        if kind == "linear":
            out = draw(st.integers(2, 7))
            layers.append(nn.Linear(width, out))
            width = out
        elif kind == "linear_gelu":
            out = draw(st.integers(2, 7))
            layers.append(nn.Sequential(nn.Linear(width, out), nn.GELU()))
            width = out
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "tanh":
            layers.append(nn.Tanh())
        elif kind == "layernorm":
            layers.append(nn.LayerNorm(width))
        elif kind == "batchnorm":
            layers.append(nn.BatchNorm1d(width))
        else:
            layers.append(nn.Identity())
    layers.append(nn.Linear(width, draw(st.integers(2, 4))))
    return nn.Sequential(*layers), in_features


@settings(max_examples=30, deadline=None)
@given(
    stack=sequential_stacks(),
    horizon=st.integers(1, 9),
    mode=st.sampled_from(["sliding", "block"]),
    seed=st.integers(0, 2**16),
)
def test_generated_stacks_match_reference(stack: tuple[nn.Sequential, int], horizon: int, mode: str, seed: int) -> None:
    model, in_features = stack
    torch.manual_seed(seed)
    model.double()
    x = torch.randn(5, in_features, dtype=torch.float64)
    classes = model[-1].out_features
    y = torch.randint(0, classes, (5,))
    blocks = partition(model)
    heads = auto_heads(blocks, x).double()
    assert_matches_reference((model, blocks, heads, x, y), horizon, mode)


@pytest.mark.parametrize(
    ("horizon", "mode", "differentiated"),
    [(1, "sliding", []), (2, "sliding", [1, 2, 3, 4]), (2, "block", [1, 3]), (4, "sliding", [1, 2, 3, 4])],
)
def test_only_inputs_a_window_differentiates_carry_a_graph(horizon: int, mode: str, differentiated: list[int]) -> None:
    """Elsewhere the next block gets the values alone: no copy for in-place first ops, no leaf kept alive."""
    blocks = [nn.Linear(3, 3) for _ in range(5)]
    heads = [nn.Linear(3, 2) for _ in range(4)]
    engine = HorizonEngine(blocks, heads, horizon, mode)  # type: ignore[arg-type]
    y = torch.tensor([0, 1])
    engine.start(lambda p: F.cross_entropy(p, y))
    x = torch.randn(2, 3)
    handed = []
    for index, block in enumerate(blocks):
        x = engine.block_output(index, block(x))
        handed.append(x.requires_grad)
    engine.finish(F.cross_entropy(x, y))
    assert [d for d in range(1, 5) if handed[d - 1]] == differentiated
    assert handed[-1]  # the model's output always carries the final loss's gradient
