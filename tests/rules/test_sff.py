"""Scalable Forward-Forward's pure-PyTorch functions against hand-built heads and isolated block losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.core.partition import partition
from lightning_mpc.recipes import cifar_resnet, mobilenet_v3, mobilenet_v3_blocks
from lightning_mpc.rules.sff.functional import (
    GoodnessHead,
    GoodnessHeadSpec,
    build_goodness_heads,
    class_goodness,
    goodness_head_spec,
    sff_backward,
    sff_loss,
    sff_votes,
    vote_scores,
)

C = 3


def _cnn(seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [
        nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(1), nn.Linear(5 * 3 * 3, 6), nn.ReLU()),
        nn.Linear(6, C),
    ]


def _shapes(blocks: list[nn.Module], x: Tensor) -> list[torch.Size]:
    shapes = []
    with torch.no_grad():
        for block in blocks:
            x = block(x)
            shapes.append(x.shape)
    return shapes


def _batch(n: int = 6, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, C, (n,), generator=g)


def test_goodness_is_the_mean_square_of_each_class_channel_on_a_hand_built_conv() -> None:
    spec = GoodnessHeadSpec(channels=2, num_classes=3, spatial=2, kernel_size=1, normalized_shape=(2, 2, 3))
    head = GoodnessHead(spec).double()
    weight = torch.tensor([[1.0, 0.0], [0.5, -2.0], [0.0, 3.0]], dtype=torch.float64)
    bias = torch.tensor([0.0, 1.0, -0.5], dtype=torch.float64)
    with torch.no_grad():
        head.conv.weight.copy_(weight.view(3, 2, 1, 1))
        head.conv.bias.copy_(bias)
    h = torch.arange(24, dtype=torch.float64).view(2, 2, 2, 3).sin() * 4
    goodness = class_goodness(head(h))
    expected = torch.zeros(2, 3, dtype=torch.float64)
    for n in range(2):
        values = h[n]
        normalised = (values - values.mean()) / torch.sqrt(values.var(unbiased=False) + 1e-5)
        for c in range(3):
            total = 0.0
            for i in range(2):
                for j in range(3):
                    a = bias[c] + sum(weight[c, ch] * normalised[ch, i, j] for ch in range(2))
                    total += float(a) ** 2
            expected[n, c] = total / 6
    torch.testing.assert_close(goodness, expected)


def test_vector_and_sequence_outputs_get_linear_and_1d_heads() -> None:
    vector = GoodnessHead(goodness_head_spec(0, torch.Size([4, 6]), C))
    sequence = GoodnessHead(goodness_head_spec(1, torch.Size([4, 6, 5]), C))
    assert isinstance(vector.conv, nn.Linear) and isinstance(sequence.conv, nn.Conv1d)
    assert class_goodness(vector(torch.randn(4, 6))).shape == (4, C)
    assert class_goodness(sequence(torch.randn(4, 6, 5))).shape == (4, C)
    with pytest.raises(ValueError, match="Block 2 outputs.*HINT"):
        goodness_head_spec(2, torch.Size([4, 2, 2, 2, 2]), C)


@pytest.mark.parametrize("logits", ["log", "raw"])
def test_margin_loss_is_the_log_sum_exp_form_and_equals_cross_entropy_at_zero_margin(logits: str) -> None:
    g = torch.randn(7, 5, dtype=torch.float64).abs() * 3
    y = torch.randint(0, 5, (7,))
    z = torch.log(g + 1e-6) if logits == "log" else g
    torch.testing.assert_close(sff_loss(g, y, "margin", 0.0, logits), F.cross_entropy(z, y))  # type: ignore[arg-type]
    expected = torch.stack(
        [F.softplus(torch.logsumexp(z[i][torch.arange(5) != y[i]], 0) - z[i, y[i]] + 0.7) for i in range(7)]
    ).mean()
    torch.testing.assert_close(sff_loss(g, y, "margin", 0.7, logits), expected)  # type: ignore[arg-type]
    torch.testing.assert_close(sff_loss(g, y, "ce", logits=logits), F.cross_entropy(z, y))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HINT"):
        sff_loss(g, y, "hinge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HINT"):
        sff_loss(g, y, logits="exp")  # type: ignore[arg-type]


def test_log_logits_make_the_loss_the_true_class_share_of_the_goodness() -> None:
    g = torch.tensor([[1.0, 3.0, 6.0], [2.0, 2.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([2, 0])
    share = torch.stack([g[0, 2] / g[0].sum(), g[1, 0] / g[1].sum()])
    torch.testing.assert_close(sff_loss(g, y), -torch.log(share).mean(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sff_loss(g * 1000, y), sff_loss(g, y), atol=1e-6, rtol=0)  # scale-invariant


@pytest.mark.parametrize(("kind", "margin", "logits"), [("ce", 0.0, "log"), ("margin", 0.5, "log"), ("ce", 0.0, "raw")])
def test_each_blocks_gradient_is_its_isolated_loss_from_a_detached_input(kind: str, margin: float, logits: str) -> None:
    blocks = [b.double() for b in _cnn()]
    x, y = _batch()
    heads = build_goodness_heads(_shapes(blocks, x)[:-1], C).double()
    losses = sff_backward(blocks, heads, x, y, kind, margin, logits, final_loss=F.cross_entropy)  # type: ignore[arg-type]
    got = [[p.grad.clone() for p in (*b.parameters(), *(h.parameters() if h is not None else ()))] for b, h in zip(blocks, [*heads, None])]

    # Reference: the inputs of every block from a plain forward, then each block's loss on its own.
    inputs = [x]
    with torch.no_grad():
        for block in blocks[:-1]:
            inputs.append(block(inputs[-1]))
    for index, block in enumerate(blocks):
        out = block(inputs[index].clone())
        if index < len(heads):
            params = [*block.parameters(), *heads[index].parameters()]
            loss = sff_loss(class_goodness(heads[index](out)), y, kind, margin, logits)  # type: ignore[arg-type]
        else:
            params = list(block.parameters())
            loss = F.cross_entropy(out, y)
        expected = torch.autograd.grad(loss, params)
        torch.testing.assert_close(losses[index], loss.detach())
        for a, b in zip(got[index], expected):
            torch.testing.assert_close(a, b)


def test_block_gradients_do_not_depend_on_later_blocks() -> None:
    blocks = [b.double() for b in _cnn()]
    x, y = _batch()
    heads = build_goodness_heads(_shapes(blocks, x)[:-1], C).double()
    sff_backward(blocks, heads, x, y)
    first = [p.grad.clone() for p in blocks[0].parameters()]
    for block in blocks:
        block.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p in blocks[2].parameters():
            p.mul_(-3.0)  # a different later block changes nothing upstream
    sff_backward(blocks, heads, x, y)
    for a, b in zip(blocks[0].parameters(), first):
        torch.testing.assert_close(a.grad, b, rtol=0, atol=0)


def _resnet18() -> tuple[list[nn.Module], Tensor]:
    torch.manual_seed(0)
    return partition(cifar_resnet("resnet18", C, in_channels=1, stem="imagenet")), torch.randn(4, 1, 16, 16)


def _mobilenet() -> tuple[list[nn.Module], Tensor]:
    torch.manual_seed(0)
    return mobilenet_v3_blocks(mobilenet_v3("mobilenet_v3_small", C)), torch.randn(4, 3, 16, 16)


@pytest.mark.parametrize("make", [_resnet18, _mobilenet], ids=["resnet18", "mobilenet_v3_small"])
def test_every_parameter_of_resnet18_and_mobilenet_v3_receives_a_gradient(make) -> None:  # type: ignore[no-untyped-def]
    blocks, x = make()
    y = torch.tensor([0, 1, 2, 1])
    heads = build_goodness_heads(_shapes(blocks, x)[:-1], C)
    for block in blocks:
        block.train()
    sff_backward(blocks, heads, x, y, final_loss=F.cross_entropy)
    params = {id(p): p for m in (*blocks, heads) for p in m.parameters()}
    missing = [p.shape for p in params.values() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for parameters of shapes {missing}"
    assert sum(bool(p.grad.abs().sum() > 0) for p in params.values()) > 0.9 * len(params)


def test_votes_average_the_blocks_probabilities_and_last_takes_the_last_block() -> None:
    blocks = _cnn()
    x, _ = _batch()
    x = x.float()
    heads = build_goodness_heads(_shapes(blocks, x)[:-1], C)
    for m in (*blocks, heads):
        m.eval()
    goodness = []
    h = x
    with torch.no_grad():
        for block, head in zip(blocks, heads):
            h = block(h)
            goodness.append(class_goodness(head(h)))
    shares = [g / g.sum(dim=1, keepdim=True) for g in goodness]  # softmax of log(g) (up to the 1e-6)
    torch.testing.assert_close(sff_votes(blocks, heads, x).exp(), torch.stack(shares).mean(dim=0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sff_votes(blocks, heads, x, "last").exp(), shares[-1], atol=1e-5, rtol=1e-4)
    average = torch.stack([F.softmax(g, dim=1) for g in goodness]).mean(dim=0)
    torch.testing.assert_close(sff_votes(blocks, heads, x, logits="raw").exp(), average)
    torch.testing.assert_close(sff_votes(blocks, heads, x, "last", "raw"), F.log_softmax(goodness[-1], dim=1))
    with pytest.raises(ValueError, match="HINT"):
        vote_scores(goodness, "first")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="goodness heads for.*HINT"):
        sff_backward(blocks, list(heads)[:1], x, torch.zeros(6, dtype=torch.long))
