"""PEPITA's pure-PyTorch functions against closed forms written out by hand (no Lightning)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.rules.pepita import (
    FeedbackProjection,
    feedback_std,
    find_layers,
    layer_update,
    mirror_angles,
    modulated_input,
    output_terms,
    pepita_backward,
    pepita_time_local,
    random_feedback,
)

N, D, H1, H2, C = 8, 6, 5, 4, 3
P_DROP = 0.3


def _mlp(bias: bool = True, dropout: float = P_DROP, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(D, H1, bias=bias), nn.Tanh()),
        nn.Sequential(nn.Linear(H1, H2, bias=bias), nn.ReLU(), nn.Dropout(dropout)),
        nn.Linear(H2, C, bias=bias),
    ).to(dtype)


def _batch(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g, dtype=dtype)
    y = torch.randint(0, C, (N,), generator=g)
    feedback = torch.randn(D, C, generator=g, dtype=dtype) * 0.5
    return x, y, feedback


def _grads(net: nn.Module) -> list[Tensor]:
    return [p.grad.clone() for p in net.parameters()]


def _reference(
    net: nn.Sequential, x: Tensor, y: Tensor, feedback: Tensor, mask: Tensor, output_error: str, variant: str = "pepita"
) -> list[Tensor]:
    """The update written out from the equations, with the dropout mask given explicitly."""
    l1, l2, l3 = net[0][0], net[1][0], net[2]

    def forward(inp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h1 = torch.tanh(inp @ l1.weight.T + l1.bias)
        h2 = torch.relu(h1 @ l2.weight.T + l2.bias) * mask
        return h1, h2, h2 @ l3.weight.T + l3.bias

    with torch.no_grad():
        onehot = F.one_hot(y, C).to(x.dtype)
        h1, h2, out = forward(x)
        p = torch.softmax(out, dim=1)
        e = p - onehot
        x_err = x + e @ feedback.T
        h1e, h2e, out_e = forward(x_err)
        e_last = e if output_error == "first" else torch.softmax(out_e, dim=1) - onehot
        if variant == "pepita":
            d1, d2 = h1 - h1e, h2 - h2e
            w1, w2, w3 = d1.T @ x_err, d2.T @ h1e, e_last.T @ h2e
            b1, b2, b3 = d1.sum(0), d2.sum(0), e_last.sum(0)
        else:
            w1 = h1.T @ x - h1e.T @ x_err
            w2 = h2.T @ h1 - h2e.T @ h1e
            w3 = p.T @ h2 - onehot.T @ h2e
            b1, b2, b3 = (h1 - h1e).sum(0), (h2 - h2e).sum(0), (p - onehot).sum(0)
    return [t / N for t in (w1, b1, w2, b2, w3, b3)]


def _dropout_mask(seed: int) -> Tensor:
    """The mask nn.Dropout draws first after ``torch.manual_seed(seed)`` for an (N, H2) input."""
    torch.manual_seed(seed)
    return F.dropout(torch.ones(N, H2, dtype=torch.float64), P_DROP, training=True)


# --------------------------------------------------------------------------- the update
@pytest.mark.parametrize("output_error", ["modulated", "first"])
def test_grad_equals_the_closed_form_update(output_error: str) -> None:
    net = _mlp()
    x, y, feedback = _batch()
    torch.manual_seed(7)
    result = pepita_backward(net, x, y, feedback, output_error=output_error)
    expected = _reference(net, x, y, feedback, _dropout_mask(7), output_error)
    for (name, param), want in zip(net.named_parameters(), expected):
        torch.testing.assert_close(param.grad, want, rtol=1e-10, atol=1e-12, msg=name)
    assert result.error.shape == (N, C)
    assert all(math.isfinite(m) and m > 0 for m in result.modulation)


def test_hebbian_variant_equals_its_closed_form() -> None:
    net = _mlp()
    x, y, feedback = _batch()
    torch.manual_seed(3)
    pepita_backward(net, x, y, feedback, variant="hebbian")
    expected = _reference(net, x, y, feedback, _dropout_mask(3), "modulated", variant="hebbian")
    for (name, param), want in zip(net.named_parameters(), expected):
        torch.testing.assert_close(param.grad, want, rtol=1e-10, atol=1e-12, msg=name)


def test_zero_feedback_gives_zero_hidden_updates_and_the_backprop_output_gradient() -> None:
    """With F = 0 both passes are identical (dropout masks included), so only the last layer learns: by BP's gradient."""
    net = _mlp()
    x, y, _ = _batch()
    torch.manual_seed(5)
    pepita_backward(net, x, y, torch.zeros(D, C, dtype=torch.float64), output_error="first")
    for param in [*net[0].parameters(), *net[1].parameters()]:
        assert param.grad is not None and torch.count_nonzero(param.grad) == 0
    last = [p.grad.clone() for p in net[2].parameters()]
    torch.manual_seed(5)  # the same dropout mask
    loss = F.cross_entropy(net(x), y)
    reference = torch.autograd.grad(loss, list(net[2].parameters()))
    for got, want in zip(last, reference):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_updates_accumulate_into_grad_and_go_through_scale() -> None:
    net = _mlp(dropout=0.0)
    x, y, feedback = _batch()
    pepita_backward(net, x, y, feedback)
    once = _grads(net)
    pepita_backward(net, x, y, feedback, scale=lambda t: 0.5 * t)
    for param, single in zip(net.parameters(), once):
        torch.testing.assert_close(param.grad, 1.5 * single, rtol=1e-12, atol=1e-14)


def test_sgd_momentum_on_grad_equals_the_authors_hand_written_momentum() -> None:
    """``SGD(lr, momentum=0.9)`` on ``.grad = update / n`` is ``v <- 0.9 v + lr * delta / n; W <- W + v``."""
    lr, steps = 0.05, 4
    net = _mlp(dropout=0.0)
    hand = _mlp(dropout=0.0)
    x, y, feedback = _batch()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    velocity = [torch.zeros_like(p) for p in hand.parameters()]
    for _ in range(steps):
        optimizer.zero_grad()
        pepita_backward(net, x, y, feedback)
        optimizer.step()
        deltas = [-N * g for g in _reference(hand, x, y, feedback, torch.ones(N, H2, dtype=torch.float64), "modulated")]
        with torch.no_grad():
            for param, v, delta in zip(hand.parameters(), velocity, deltas):
                v.mul_(0.9).add_(lr * delta / N)
                param.add_(v)
    for (name, got), want in zip(net.named_parameters(), hand.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=name)


# --------------------------------------------------------------------------- convolutions
def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, bias=False), nn.Tanh(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(4, C)),
    ).double()


def test_conv_update_equals_conv2d_weight_and_the_unfolded_outer_product() -> None:
    net = _conv_net()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, 2, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    feedback = torch.randn(2 * 6 * 6, C, generator=g, dtype=torch.float64) * 0.3
    pepita_backward(net, x, y, feedback)
    conv1, conv2 = net[0][0], net[1][0]
    with torch.no_grad():
        e = torch.softmax(net(x), 1) - F.one_hot(y, C).double()
        x_err = x + (e @ feedback.T).reshape(x.shape)
        h1, h1e = torch.relu(conv1(x)), torch.relu(conv1(x_err))
        h2, h2e = torch.tanh(conv2(h1)), torch.tanh(conv2(h1e))
    # the unfolded outer product, summed over samples and positions
    for conv, inputs, delta, padding in ((conv1, x_err, h1 - h1e, 1), (conv2, h1e, h2 - h2e, 0)):
        patches = F.unfold(inputs, conv.kernel_size, padding=padding, stride=conv.stride)  # (N, Cin*k*k, L)
        outer = torch.einsum("nol,nil->oi", delta.flatten(2), patches).reshape(conv.weight.shape) / N
        torch.testing.assert_close(conv.weight.grad, outer, rtol=1e-10, atol=1e-12)
        library = torch.nn.grad.conv2d_weight(inputs, conv.weight.shape, delta, conv.stride, padding) / N
        torch.testing.assert_close(conv.weight.grad, library, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(conv1.bias.grad, (h1 - h1e).sum((0, 2, 3)) / N, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(2, 4, 3, padding="same"),
        lambda: nn.Conv2d(2, 4, 4, padding="same", dilation=1),
        lambda: nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"),
        lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, dilation=2),
    ],
    ids=["same", "same-even-kernel", "reflect", "groups-dilation-stride"],
)
def test_layer_update_matches_the_weight_vjp_for_every_padding(conv: object) -> None:
    torch.manual_seed(0)
    layer = conv().double()  # type: ignore[operator]
    x = torch.randn(3, layer.in_channels, 7, 7, dtype=torch.float64)
    delta = torch.randn_like(layer(x))
    weight, bias = layer_update(layer, delta, x)
    want_w, want_b = torch.autograd.grad(layer(x), [layer.weight, layer.bias], delta)
    torch.testing.assert_close(weight, want_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bias, want_b, rtol=1e-10, atol=1e-12)


def test_conv_scale_divides_by_the_number_of_output_positions() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, 3).double()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    delta = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    total = layer_update(layer, delta, x)
    for scale, divisor in (("mean", 16.0), ("sqrt", 4.0)):
        for got, want in zip(layer_update(layer, delta, x, scale), total):  # type: ignore[arg-type]
            torch.testing.assert_close(got, want / divisor)


# --------------------------------------------------------------------------- adaptive feedback alignment
def test_first_layer_update_is_dfa_with_feedback_minus_w1_f_to_first_order() -> None:
    """``(h_1 - h_1_err) x_err^T`` against DFA's ``(sigma'(a_1) * (B e)) x^T`` with ``B = -W_1 F``: error linear in |F|."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Linear(D, 16), nn.Tanh()), nn.Linear(16, C)).double()
    x, y, _ = _batch()
    base = torch.randn(D, C, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    errors = []
    for size in (1e-2, 1e-3, 1e-4):
        feedback = base * size
        for p in net.parameters():
            p.grad = None
        result = pepita_backward(net, x, y, feedback)
        layer = net[0][0]
        with torch.no_grad():
            slope = 1 - torch.tanh(x @ layer.weight.T + layer.bias) ** 2
            dfa = ((result.error @ (-layer.weight @ feedback).T) * slope).T @ x / N
        errors.append(float((layer.weight.grad - dfa).norm() / dfa.norm()))
    assert errors[0] < 0.1, errors
    for larger, smaller in pairwise(errors):
        assert 0.05 < smaller / larger < 0.2, f"relative error not linear in F's scale: {errors}"


# --------------------------------------------------------------------------- weight mirroring
def test_mirroring_shrinks_the_angle_between_every_factor_and_w_transposed() -> None:
    torch.manual_seed(0)
    layers = [nn.Linear(D, 16), nn.Linear(16, 12), nn.Linear(12, C)]
    feedback = FeedbackProjection(D, C, hidden_sizes=[16, 12])
    feedback.reset(torch.Generator().manual_seed(0))
    before = mirror_angles(layers, feedback.factors)
    assert all(a > 60 for a in before), before
    feedback.mirror(layers, noise_std=0.1, lr=1.0, weight_decay=0.0, samples=64, steps=200)
    after = mirror_angles(layers, feedback.factors)
    assert all(a < b - 30 for a, b in zip(after, before)), (before, after)
    assert all(a < 30 for a in after), after
    # the normalisation keeps F's standard deviation, and F is -B_1 B_2 B_3
    assert math.isclose(float(feedback.weight().std()), feedback_std(D), rel_tol=1e-5)
    product = feedback.factors[0] @ feedback.factors[1] @ feedback.factors[2]
    torch.testing.assert_close(feedback.weight(), -product)


def test_mirrored_feedback_aligns_the_first_layer_update_with_backprop() -> None:
    """With ``B_l`` along ``W_l^T``, ``-W_1 F`` is ``W_1 W_1^T W_2^T`` (BP's feedback up to a near-isotropic factor):
    the first layer's update points along BP's gradient; the opposite sign of ``F`` points against it."""
    torch.manual_seed(0)
    wide = 64
    net = nn.Sequential(nn.Sequential(nn.Linear(wide, 16), nn.Tanh()), nn.Linear(16, C)).double()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(N, wide, generator=g, dtype=torch.float64), torch.randint(0, C, (N,), generator=g)
    feedback = FeedbackProjection(wide, C, hidden_sizes=[16]).double()
    with torch.no_grad():
        feedback.factor_0.copy_(net[0][0].weight.T * 1e-3)
        feedback.factor_1.copy_(net[1].weight.T)
    bp = torch.autograd.grad(F.cross_entropy(net(x), y, reduction="sum"), net[0][0].weight)[0]
    cosines = []
    for sign in (1.0, -1.0):
        net[0][0].weight.grad = None
        pepita_backward(net, x, y, sign * feedback.weight())
        cosines.append(float(F.cosine_similarity(net[0][0].weight.grad.flatten(), bp.flatten(), dim=0)))
    assert cosines[0] > 0.8 and cosines[1] < -0.8, cosines


# --------------------------------------------------------------------------- time-local
def test_time_local_applies_the_hebbian_term_then_the_anti_hebbian_term_with_updated_weights() -> None:
    lr = 0.1
    net = _mlp(dropout=0.0)
    hand = _mlp(dropout=0.0)
    x, y, feedback = _batch()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    steps: list[int] = []

    def step() -> None:
        optimizer.step()
        optimizer.zero_grad()
        steps.append(1)

    pepita_time_local(net, x, y, feedback, step)
    assert len(steps) == 2
    l1, l2, l3 = hand[0][0], hand[1][0], hand[2]
    with torch.no_grad():
        onehot = F.one_hot(y, C).double()
        h1 = torch.tanh(l1(x))
        h2 = torch.relu(l2(h1))
        p = torch.softmax(l3(h2), 1)
        for layer, act, inp in ((l1, h1, x), (l2, h2, h1), (l3, p, h2)):
            layer.weight -= lr * act.T @ inp / N
            layer.bias -= lr * act.sum(0) / N
        x_err = x + (p - onehot) @ feedback.T
        h1e = torch.tanh(l1(x_err))
        h2e = torch.relu(l2(h1e))
        for layer, act, inp in ((l1, h1e, x_err), (l2, h2e, h1e), (l3, onehot, h2e)):
            layer.weight += lr * act.T @ inp / N
            layer.bias += lr * act.sum(0) / N
    for (name, got), want in zip(net.named_parameters(), hand.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=name)


# --------------------------------------------------------------------------- pieces
def test_random_feedback_is_he_uniform_scaled() -> None:
    matrix = random_feedback(3072, 10, generator=torch.Generator().manual_seed(0))
    bound = 0.05 * math.sqrt(6 / 3072)
    assert matrix.shape == (3072, 10)
    assert float(matrix.abs().max()) <= bound
    assert math.isclose(float(matrix.std()), feedback_std(3072), rel_tol=0.05)
    again = random_feedback(3072, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(matrix, again)


def test_modulated_input_reshapes_f_e_like_the_input() -> None:
    x = torch.zeros(2, 1, 2, 2)
    feedback = torch.arange(8.0).reshape(4, 2)
    error = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = modulated_input(x, feedback, error)
    assert torch.equal(out[0].flatten(), feedback[:, 0]) and torch.equal(out[1].flatten(), feedback[:, 1])
    with pytest.raises(ValueError, match="HINT"):
        modulated_input(x, torch.zeros(5, 2), error)


def test_output_terms_for_classes_and_for_float_targets() -> None:
    out = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    p, t = output_terms(out, torch.tensor([1, 0]))
    torch.testing.assert_close(p, torch.softmax(out, 1))
    assert torch.equal(t, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    p, t = output_terms(out, torch.ones(2, 2))
    assert torch.equal(p - t, out - 1)
    with pytest.raises(ValueError, match="HINT"):
        output_terms(out, torch.ones(3))


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("blocks", "error", "match"),
    [
        ([nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU()), nn.Linear(4, 2)], ValueError, "BatchNorm1d"),
        ([nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), nn.Linear(4, 2)], ValueError, "LayerNorm"),
        ([nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)), nn.Linear(4, 2)], ValueError, "2 trainable"),
        (
            [nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Sequential(nn.Linear(4, 2), nn.Softmax(1))],
            ValueError,
            "Softmax",
        ),
        ([nn.Flatten(), nn.ReLU()], ValueError, "nothing to"),
        ([nn.Sequential(nn.Linear(4, 4), nn.PReLU()), nn.Linear(4, 2)], ValueError, "PReLU"),
        ([nn.TransformerEncoderLayer(4, 1), nn.Linear(4, 2)], TypeError, "nn.Sequential"),
    ],
    ids=["batchnorm", "layernorm", "two-layers", "softmax-output", "no-layer", "prelu", "custom-block"],
)
def test_find_layers_refuses_what_pepita_cannot_train(blocks: list[nn.Module], error: type, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        find_layers(blocks)
    assert "HINT" in str(info.value)


def test_find_layers_reads_tails_pooling_and_pass_through_blocks() -> None:
    relu = nn.ReLU()
    blocks = [
        nn.Sequential(nn.Conv2d(1, 2, 3), relu, nn.Dropout(0.1), nn.MaxPool2d(2)),
        nn.Flatten(),
        nn.Sequential(nn.Linear(8, 4), relu),
        nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 2)),
        nn.Identity(),
    ]
    layers = find_layers(blocks)
    assert [layer.block for layer in layers] == [0, 2, 3]
    assert isinstance(layers[0].tail, nn.Dropout) and layers[1].tail is relu and layers[2].tail is layers[2].module
    shared = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="used in block"):
        find_layers([nn.Sequential(shared, nn.ReLU()), nn.Sequential(shared, nn.ReLU()), nn.Linear(4, 2)])


def _assert_same_updates(net: nn.Sequential, twin: nn.Sequential) -> None:
    """``net`` and ``twin`` (the same weights, plain modules) get identical PEPITA updates."""
    twin.load_state_dict(net.state_dict())
    x, y, feedback = _batch()
    pepita_backward(net.double(), x, y, feedback)
    pepita_backward(twin.double(), x, y, feedback)
    for got, want in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=0)


def _plain(first: nn.Module, second: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Sequential(nn.Linear(D, 5), first), nn.Sequential(*second), nn.Linear(4, C))


def test_a_shared_activation_module_records_each_layer() -> None:
    """One nn.ReLU reused by two blocks is the tail of both layers; each layer still gets its own activity."""
    torch.manual_seed(0)
    relu = nn.ReLU()
    net = _plain(relu, [nn.Linear(5, 4), relu])
    _assert_same_updates(net, _plain(nn.ReLU(), [nn.Linear(5, 4), nn.ReLU()]))


def test_in_place_activations_do_not_corrupt_the_record() -> None:
    """An in-place ReLU at the start of a block would overwrite the previous layer's recorded activity."""
    torch.manual_seed(0)
    net = _plain(nn.Tanh(), [nn.ReLU(inplace=True), nn.Linear(5, 4)])
    _assert_same_updates(net, _plain(nn.Tanh(), [nn.ReLU(), nn.Linear(5, 4)]))


def test_at_the_authors_scale_the_hidden_update_is_an_order_smaller_than_backprop() -> None:
    """784-1024-10 on 256 bundled digits at initialisation: |PEPITA's hidden update| ~ 0.08 |BP's gradient|
    (quoted in docs/rules/pepita.md), while the output layer's update matches BP's gradient in size."""
    from lightning_mpc.data import load_bundled_mnist
    from lightning_mpc.recipes import DropoutMLP

    images, labels = load_bundled_mnist()
    x = torch.from_numpy(images[:256]).float().div(255).flatten(1)
    y = torch.from_numpy(labels[:256]).long()
    torch.manual_seed(0)
    net = DropoutMLP(in_features=784, dropout=0.0).net
    assert net is not None
    pepita_backward(net, x, y, random_feedback(784, 10, generator=torch.Generator().manual_seed(0)))
    updates = [p.grad.clone() for p in net.parameters()]
    reference = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    hidden, output = (float(u.norm() / r.norm()) for u, r in zip(updates, reference))
    assert 0.05 < hidden < 0.12, hidden
    assert 0.9 < output < 1.1, output
