"""Forward-Forward's pure-PyTorch functions against closed forms and brute-force references (no Lightning)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.rules.ff.functional import (
    FFObjective,
    embed_label,
    ff_backward,
    goodness_scores,
    hardest_negative_labels,
    length_normalize,
    random_negative_labels,
    scored_layers,
    squared_activity,
)

C = 4


def _layers(widths: list[int], seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(widths[:-1], widths[1:])]


def _data(n: int = 12, features: int = 10, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    wrong = (y + torch.randint(1, C, (n,), generator=g)) % C
    return x, y, wrong


def _one_hot_input(x: Tensor, labels: Tensor | None, value: float = 1.0) -> Tensor:
    """An independent label embedding: a loop over samples writing the first C values."""
    out = x.clone().reshape(x.shape[0], -1)
    for i in range(x.shape[0]):
        for c in range(C):
            if labels is None:
                out[i, c] = value / C
            else:
                out[i, c] = value if c == int(labels[i]) else 0.0
    return out.view_as(x)


@pytest.mark.parametrize("goodness", ["sum", "mean"])
@pytest.mark.parametrize(("threshold", "sharpness"), [(None, 1.0), (0.7, 1.0), (None, 6.0)])
def test_one_layer_gradient_equals_the_closed_form(goodness: str, threshold: float | None, sharpness: float) -> None:
    (layer,) = _layers([10, 7])
    layer.double()
    x, y, wrong = _data()
    objective = FFObjective(goodness=goodness, threshold=threshold, sharpness=sharpness)  # type: ignore[arg-type]
    x_pos, x_neg = embed_label(x, y, C), embed_label(x, wrong, C)
    (loss,) = ff_backward([layer], x_pos, x_neg, objective)
    linear = layer[0]

    # Closed form: h = relu(W u + b), u = x / rms(x); z = alpha (G(h) - theta); L = mean_i softplus(-s_i z_i) over 2N.
    units = 7
    theta = threshold if threshold is not None else (float(units) if goodness == "sum" else 1.0)
    k = 1.0 if goodness == "sum" else 1.0 / units  # G = k * sum_j h_j^2
    u = torch.cat([x_pos, x_neg])
    u = u / u.pow(2).mean(dim=1, keepdim=True).sqrt()
    with torch.no_grad():
        h = torch.relu(u @ linear.weight.T + linear.bias)
        z = sharpness * (k * h.pow(2).sum(dim=1) - theta)
        s = torch.cat([torch.ones(12), -torch.ones(12)]).double()
        two_n = 24
        dl_dz = -s * torch.sigmoid(-s * z) / two_n  # d softplus(-s z)/dz = -s * sigmoid(-s z)
        expected_loss = F.softplus(-s * z).mean()
        delta = dl_dz[:, None] * sharpness * 2 * k * h  # dL/d(pre-activation); h = 0 where the ReLU is off
        grad_w = delta.T @ u
        grad_b = delta.sum(dim=0)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(linear.weight.grad, grad_w)
    torch.testing.assert_close(linear.bias.grad, grad_b)


@pytest.mark.parametrize("factor", [0.0, 1000.0])
def test_no_gradient_leaks_across_a_layer_boundary(factor: float) -> None:
    layers = _layers([10, 8, 8, 6])
    for layer in layers:
        layer.double()
    x, y, wrong = _data()
    x_pos, x_neg = embed_label(x, y, C), embed_label(x, wrong, C)

    def grads(weights: list[float]) -> list[list[Tensor]]:
        for layer in layers:
            layer.zero_grad(set_to_none=True)
        ff_backward(layers, x_pos, x_neg, layer_weights=weights)
        return [[p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in layer.parameters()] for layer in layers]

    base = grads([1.0, 1.0, 1.0])
    for boundary in (0, 1):  # scale the loss of layer l + 1; layer l (and every layer before it) must not move
        weights = [1.0, 1.0, 1.0]
        weights[boundary + 1] = factor
        scaled = grads(weights)
        for earlier in range(boundary + 1):
            for a, b in zip(scaled[earlier], base[earlier]):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        for a, b in zip(scaled[boundary + 1], base[boundary + 1]):
            torch.testing.assert_close(a, factor * b)


def test_layer_inputs_are_length_normalised_and_detached() -> None:
    layers = _layers([10, 8, 6])
    x, y, wrong = _data()
    x = x.float().requires_grad_(True)
    seen: list[Tensor] = []
    layers[1].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    ff_backward(layers, embed_label(x, y, C), embed_label(x, wrong, C))
    assert x.grad is None
    (inputs,) = seen
    assert not inputs.requires_grad
    torch.testing.assert_close(inputs.pow(2).mean(dim=1), torch.ones(inputs.shape[0]), atol=1e-5, rtol=0)


def test_goodness_arg_max_equals_a_brute_force_loop_over_labels() -> None:
    layers = _layers([10, 9, 8, 7])
    x, _, _ = _data(n=20)
    x = x.float()
    for which in ("all_but_first", "all"):
        scores = goodness_scores(layers, x, C, FFObjective(goodness="sum"), which)  # type: ignore[arg-type]
        first = 1 if which == "all_but_first" else 0
        expected = torch.zeros(20, C)
        for label in range(C):
            h = _one_hot_input(x, torch.full((20,), label))
            with torch.no_grad():
                for index, layer in enumerate(layers):
                    h = layer(h / h.pow(2).mean(dim=1, keepdim=True).sqrt())
                    if index >= first:
                        expected[:, label] += h.pow(2).sum(dim=1)
        torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(scores.argmax(dim=1), expected.argmax(dim=1))


def test_hardest_negative_is_the_best_scoring_wrong_label() -> None:
    layers = _layers([10, 9, 8])
    x, y, _ = _data(n=30)
    x = x.float()
    wrong = hardest_negative_labels(layers, x, y, C)
    scores = goodness_scores(layers, x, C)
    assert not bool((wrong == y).any())
    for i in range(30):
        candidates = [c for c in range(C) if c != int(y[i])]
        assert int(wrong[i]) == max(candidates, key=lambda c: float(scores[i, c]))


def test_random_negatives_are_wrong_uniform_and_reproducible() -> None:
    y = torch.arange(C).repeat(2000)
    first = random_negative_labels(y, C, torch.Generator().manual_seed(5))
    again = random_negative_labels(y, C, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    assert not bool((first == y).any())
    for label in range(C):
        drawn = first[y == label]
        counts = torch.bincount(drawn, minlength=C).float()
        assert counts[label] == 0
        share = counts[torch.arange(C) != label] / drawn.numel()
        assert torch.allclose(share, torch.full_like(share, 1 / (C - 1)), atol=0.05)


def test_embed_label_writes_the_first_values_and_leaves_the_input_alone() -> None:
    x = torch.randn(3, 1, 5, 5)
    y = torch.tensor([0, 3, 1])
    before = x.clone()
    out = embed_label(x, y, C, value=2.5)
    assert torch.equal(x, before)
    torch.testing.assert_close(out, _one_hot_input(x, y, 2.5))
    assert torch.equal(out[:, :, 1:], x[:, :, 1:])  # an image keeps everything but the top row's first C pixels
    torch.testing.assert_close(embed_label(x, None, C, value=2.0), _one_hot_input(x, None, 2.0))
    with pytest.raises(ValueError, match="fewer than the 4 classes.*HINT"):
        embed_label(torch.randn(2, 3), None, C)
    with pytest.raises(ValueError, match="0..3.*HINT"):
        embed_label(x, torch.tensor([0, 4, 1]), C)


def test_length_normalize_gives_unit_root_mean_square() -> None:
    x = torch.randn(5, 3, 4) * 7
    out = length_normalize(x)
    torch.testing.assert_close(out.flatten(1).pow(2).mean(dim=1), torch.ones(5))
    torch.testing.assert_close(out * x.flatten(1).pow(2).mean(dim=1).sqrt()[:, None, None], x)


def test_peer_normalisation_adds_its_penalty_and_updates_the_running_means() -> None:
    (layer,) = _layers([10, 6])
    layer.double()
    x, y, wrong = _data()
    x_pos, x_neg = embed_label(x, y, C), embed_label(x, wrong, C)
    running = torch.rand(6, dtype=torch.float64)
    old = running.clone()
    objective = FFObjective(peer_weight=0.5, peer_momentum=0.8)
    (loss,) = ff_backward([layer], x_pos, x_neg, objective, peer_means=[running])
    grad = layer[0].weight.grad.clone()

    layer.zero_grad(set_to_none=True)
    u = length_normalize(torch.cat([x_pos, x_neg]))
    h = layer(u)
    r = 0.8 * old + 0.2 * h[:12].mean(dim=0)
    reference = FFObjective().loss(h[:12], h[12:]) + 0.5 * (r.mean() - r).pow(2).mean()
    reference.backward()
    torch.testing.assert_close(loss, reference.detach())
    torch.testing.assert_close(grad, layer[0].weight.grad)
    torch.testing.assert_close(running, r.detach())
    with pytest.raises(ValueError, match="peer_means.*HINT"):
        ff_backward([layer], x_pos, x_neg, objective)


def test_gradients_accumulate_and_the_scale_applies() -> None:
    layers = _layers([10, 8, 6])
    x, y, wrong = _data()
    x_pos, x_neg = embed_label(x.float(), y, C), embed_label(x.float(), wrong, C)
    ff_backward(layers, x_pos, x_neg)
    once = [p.grad.clone() for layer in layers for p in layer.parameters()]
    ff_backward(layers, x_pos, x_neg, scale=lambda loss: loss * 0.5)
    for param, first in zip((p for layer in layers for p in layer.parameters()), once):
        torch.testing.assert_close(param.grad, 1.5 * first)


def test_objective_and_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="goodness.*HINT"):
        FFObjective(goodness="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold.*HINT"):
        FFObjective(threshold=0.0)
    with pytest.raises(ValueError, match="peer_weight.*HINT"):
        FFObjective(peer_weight=-1.0)
    with pytest.raises(ValueError, match="sharpness.*HINT"):
        FFObjective(sharpness=0.0)
    with pytest.raises(ValueError, match="score_layers.*HINT"):
        scored_layers(3, "last")  # type: ignore[arg-type]
    assert scored_layers(1) == [0] and scored_layers(3) == [1, 2] and scored_layers(3, "all") == [0, 1, 2]
    layers = _layers([10, 8])
    x, y, wrong = _data()
    with pytest.raises(ValueError, match="layer weights.*HINT"):
        ff_backward(layers, x.float(), x.float(), layer_weights=[1.0, 2.0])


@pytest.mark.parametrize("mean", [False, True])
def test_squared_activity_matches_autograd_and_passes_gradcheck(mean: bool) -> None:
    h = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    value = squared_activity(h, mean)
    expected = h.pow(2).flatten(1).mean(1) if mean else h.pow(2).flatten(1).sum(1)
    torch.testing.assert_close(value, expected)
    assert torch.autograd.gradcheck(lambda t: squared_activity(t, mean), (h,))
