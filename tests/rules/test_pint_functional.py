"""The parallel-in-time gradients without Lightning, against plain back-propagation (tests/rules/pint_helpers.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mpc.rules.pint import (
    Boundaries,
    CoarseNetwork,
    ResidualStep,
    parallel_in_time,
    pint_backward,
    residual_mlp,
    slab_ranges,
    split_network,
)
from tests.rules.pint_helpers import CASES, PinTCase, backprop_reference, cosine, restore_buffers, snapshot_buffers

MODELS = sorted(CASES)


def _run(case: PinTCase, slabs: int, iterations: int, **kwargs: object) -> tuple[list[torch.Tensor], object]:
    """pint_backward's gradients (by parameter position) from a clean ``.grad``, buffers as they were before."""
    for p in case.parameters:
        p.grad = None
    blocks, x, y, loss_fn = case.blocks, case.x, case.y, case.loss_fn
    result = pint_backward(blocks, x, y, loss_fn, slabs, iterations, **kwargs)  # type: ignore[arg-type]
    grads = [p.grad.detach().clone() for p in case.parameters]
    return grads, result


def _exact(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> bool:
    return all(torch.equal(g, r) for g, r in zip(grads, reference))


@pytest.mark.parametrize("model", MODELS)
def test_one_slab_is_back_propagation(model: str) -> None:
    case = CASES[model]()
    before = snapshot_buffers(case)
    reference = backprop_reference(case, 1)
    restore_buffers(case, before)
    grads, result = _run(case, 1, 1)
    assert _exact(grads, reference.grads)
    assert torch.equal(result.loss, reference.loss)
    assert all(torch.equal(b, r) for b, r in zip(case.buffers, reference.buffers)), "buffers must move as in one step"
    assert all(g.abs().sum() > 0 for g in grads), "every parameter receives a gradient"


@pytest.mark.parametrize("model", MODELS)
def test_exact_boundary_values_give_back_propagation_at_three_slabs(model: str) -> None:
    case = CASES[model]()
    before = snapshot_buffers(case)
    reference = backprop_reference(case, 3)
    restore_buffers(case, before)
    grads, _ = _run(case, 3, 1, boundaries=reference.boundaries)
    difference = max(float((g - r).abs().max()) for g, r in zip(grads, reference.grads))
    assert difference == 0.0
    # The coarse predictor alone is not exact here: the probe is what makes the difference vanish.
    predicted, _ = _run(case, 3, 1)
    assert not _exact(predicted, reference.grads)


@pytest.mark.parametrize("model", MODELS)
def test_after_k_iterations_the_first_k_slabs_are_exact(model: str) -> None:
    case = CASES[model](steps=8)
    K = 4
    before = snapshot_buffers(case)
    reference = backprop_reference(case, K)
    restore_buffers(case, before)
    _, result = _run(case, K, K, record=True)
    assert len(result.history) == K + 1
    for k, boundaries in enumerate(result.history):
        for s in range(K + 1):
            exact = torch.equal(boundaries.states[s], reference.boundaries.states[s])
            if s <= k:
                assert exact, f"iteration {k}: boundary state {s} (output of slab {s - 1}) is not exact"
            elif s == k + 1:
                assert not exact, f"iteration {k}: boundary state {s} is exact before the corrections reached it"


@pytest.mark.parametrize("model", MODELS)
def test_slab_s_is_exact_after_2K_minus_1_minus_s_iterations(model: str) -> None:
    case = CASES[model]()
    K = 3
    network = split_network(case.blocks)
    ranges = slab_ranges(len(network.steps), K)
    slab_of = {}
    for s, steps in enumerate(ranges):
        for j in steps:
            for p in network.steps[j].parameters():
                slab_of[id(p)] = s
    for p in (p for block in network.head for p in block.parameters()):
        slab_of[id(p)] = K - 1  # the head learns with the last slab
    for p in (p for block in network.stem for p in block.parameters()):
        slab_of[id(p)] = 0  # the stem learns from the first slab's co-state
    before = snapshot_buffers(case)
    reference = backprop_reference(case, K)
    for iterations in range(1, 2 * K):
        restore_buffers(case, before)
        grads, _ = _run(case, K, iterations)
        for p, g, r in zip(case.parameters, grads, reference.grads):
            s = slab_of[id(p)]
            if iterations >= 2 * K - 1 - s:
                assert torch.equal(g, r), f"{iterations} iterations: slab {s} should be exact"
            else:
                assert not torch.equal(g, r), f"{iterations} iterations: slab {s} exact earlier than the bound"
    assert all(torch.equal(b, r) for b, r in zip(case.buffers, reference.buffers)), "2K-1 sweeps: BP's statistics"


def test_cosine_to_back_propagation_rises_with_the_iterations() -> None:
    case = CASES["mlp"](steps=8)
    reference = backprop_reference(case, 4)
    cosines = [cosine(_run(case, 4, k)[0], reference.grads) for k in range(1, 8)]
    assert cosines[-1] == pytest.approx(1.0, abs=1e-12)
    assert all(later >= earlier - 1e-9 for earlier, later in zip(cosines, cosines[1:])), cosines
    assert cosines[0] > 0.9


@pytest.mark.parametrize("weights", ["mean", "first"])
def test_a_coarse_network_equal_to_the_fine_one_predicts_exactly(weights: str) -> None:
    # coarsening=1: every coarse step is one fine step, so G_s is F_s (a mean of one is the parameter itself).
    case = CASES["conv"]()
    before = snapshot_buffers(case)
    reference = backprop_reference(case, 3)
    restore_buffers(case, before)
    grads, result = _run(case, 3, 1, coarsening=1, coarse_weights=weights, record=True)
    assert _exact(grads, reference.grads)
    predicted = result.history[0]
    assert all(torch.equal(a, b) for a, b in zip(predicted.states, reference.boundaries.states))
    assert all(torch.equal(a, b) for a, b in zip(predicted.costates[1:], reference.boundaries.costates[1:]))


def test_mean_and_first_coarse_weights_differ_on_longer_slabs() -> None:
    case = CASES["mlp"](steps=8)
    reference = backprop_reference(case, 2)
    mean, _ = _run(case, 2, 1, coarse_weights="mean")
    first, _ = _run(case, 2, 1, coarse_weights="first")
    two_steps, _ = _run(case, 2, 1, coarsening=2)
    assert not _exact(mean, first) and not _exact(mean, two_steps)
    for grads in (mean, first, two_steps):
        assert cosine(grads, reference.grads) > 0.9


def test_gradients_accumulate_and_follow_the_scale() -> None:
    case = CASES["mlp"]()
    once, _ = _run(case, 2, 2)
    for p in case.parameters:
        p.grad = None
    for _ in range(2):
        pint_backward(case.blocks, case.x, case.y, case.loss_fn, 2, 2, scale=lambda loss: loss / 2)
    for p, g in zip(case.parameters, once):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)


def test_parallel_in_time_leaves_the_input_to_the_caller() -> None:
    case = CASES["mlp"]()
    network = split_network(case.blocks)
    x0 = network.stem[0](case.x)
    for p in case.parameters:
        p.grad = None
    result = parallel_in_time(network.steps, x0, network.head, lambda out: F.cross_entropy(out, case.y), 1)
    assert all(p.grad is None for p in network.stem[0].parameters())
    leaf = x0.detach().requires_grad_(True)
    x = leaf
    for block in case.blocks[1:]:
        x = block(x)
    (expected,) = torch.autograd.grad(F.cross_entropy(x, case.y), leaf)
    assert torch.equal(result.input_costate, expected)


def test_timeline_has_every_slab_of_every_sweep() -> None:
    case = CASES["mlp"](steps=8)
    _, result = _run(case, 4, 3)
    assert sorted((t.sweep, t.slab) for t in result.timeline) == [(i, s) for i in (1, 2, 3) for s in range(4)]
    assert all(t.end >= t.start and t.cpu > 0 for t in result.timeline)


# ----------------------------------------------------------------------------- bad input


def _hint(error: pytest.ExceptionInfo[BaseException]) -> None:
    assert "HINT" in str(error.value)


def test_blocks_of_unequal_width_are_refused() -> None:
    blocks = [ResidualStep(nn.Linear(4, 4), 0.1), ResidualStep(nn.Linear(4, 6), 0.1), nn.Linear(4, 2)]
    with pytest.raises(ValueError, match="keeps the width") as error:
        pint_backward(blocks, torch.randn(3, 4), torch.tensor([0, 1, 0]), F.cross_entropy, 2)
    _hint(error)


def test_more_slabs_than_steps_are_refused() -> None:
    net = residual_mlp(num_steps=3, width=4, in_features=2, num_classes=2)
    with pytest.raises(ValueError, match="3 residual steps into 4 slabs") as error:
        pint_backward(list(net), torch.randn(3, 2), torch.tensor([0, 1, 0]), F.cross_entropy, 4)
    _hint(error)


def test_non_residual_blocks_between_steps_are_refused() -> None:
    net = residual_mlp(num_steps=4, width=4, in_features=2, num_classes=2)
    blocks = [*list(net)[:3], nn.Linear(4, 4), *list(net)[3:]]
    with pytest.raises(ValueError, match="Block 3 \\(Linear\\) sits between") as error:
        pint_backward(blocks, torch.randn(3, 2), torch.tensor([0, 1, 0]), F.cross_entropy, 2)
    _hint(error)
    with pytest.raises(ValueError, match="none of the blocks is a ResidualStep") as error:
        pint_backward([nn.Linear(2, 4), nn.Linear(4, 2)], torch.randn(3, 2), torch.tensor([0, 1]), F.cross_entropy, 1)
    _hint(error)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"slabs": 0}, "slabs must be an integer"),
        ({"iterations": 0}, "iterations must be an integer"),
        ({"coarsening": 0}, "coarsening must be an integer"),
        ({"coarse_weights": "median"}, "coarse_weights must be one of"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], match: str) -> None:
    case = CASES["mlp"]()
    settings: dict[str, object] = {"slabs": 2, "iterations": 1} | kwargs
    slabs, iterations = settings.pop("slabs"), settings.pop("iterations")
    with pytest.raises(ValueError, match=match) as error:
        pint_backward(case.blocks, case.x, case.y, case.loss_fn, slabs, iterations, **settings)  # type: ignore
    _hint(error)


def test_dropout_inside_steps_and_unaveraged_fields_are_refused() -> None:
    steps = [ResidualStep(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)), 0.1) for _ in range(2)]
    with pytest.raises(ValueError, match="Dropout\\(p=0.1\\)") as error:
        pint_backward(steps, torch.randn(3, 4), torch.randn(3, 4), F.mse_loss, 1)
    _hint(error)
    mixed = [ResidualStep(nn.Linear(4, 4), 0.1), ResidualStep(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 4)), 0.1)]
    with pytest.raises(ValueError, match="coarse_weights='mean'") as error:
        CoarseNetwork(mixed, 1)
    _hint(error)
    CoarseNetwork(mixed, 1, weights="first")  # injection needs no common architecture


def test_boundaries_of_the_wrong_count_are_refused() -> None:
    case = CASES["mlp"]()
    reference = backprop_reference(case, 2)
    with pytest.raises(ValueError, match="expected 4 of each") as error:
        _run(case, 3, 1, boundaries=Boundaries(reference.boundaries.states, reference.boundaries.costates))
    _hint(error)


def test_residual_step_refuses_a_bad_step_size() -> None:
    for dt in (0.0, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match="positive, finite step size") as error:
            ResidualStep(nn.Linear(2, 2), dt)  # type: ignore[arg-type]
        _hint(error)


def test_slab_ranges_are_contiguous_and_balanced() -> None:
    assert slab_ranges(16, 4) == [range(4), range(4, 8), range(8, 12), range(12, 16)]
    assert [len(r) for r in slab_ranges(7, 3)] == [3, 2, 2]
    assert slab_ranges(5, 1) == [range(5)]
