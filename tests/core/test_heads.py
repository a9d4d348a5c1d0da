"""Head inference from shapes and the default local loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_mpc.core.blocks import BlockSpan
from lightning_mpc.core.heads import HeadSpec, LocalHead, default_local_loss, head_specs_for, infer_head_spec


@pytest.mark.parametrize(
    ("block_shape", "model_shape", "kind", "in_features", "out_features"),
    [
        ((8, 32), (8, 10), "vector", 32, 10),
        ((8, 16, 5, 5), (8, 10), "feature_map", 16, 10),
        ((8, 4, 6, 6, 6), (8, 3), "feature_map", 4, 3),
        ((8, 7, 12), (8, 2), "tokens", 12, 2),
        ((8, 7, 12), (8, 7, 50), "per_token", 12, 50),
    ],
)
def test_head_kind_follows_shapes(block_shape: tuple, model_shape: tuple, kind: str, in_features: int, out_features: int) -> None:
    spec = infer_head_spec(0, torch.Size(block_shape), torch.Size(model_shape))
    assert spec == HeadSpec(kind, in_features, out_features)  # type: ignore[arg-type]
    head = LocalHead(spec)
    assert head(torch.randn(block_shape)).shape == torch.Size(model_shape)


def test_channels_last_blocks_get_heads_that_pool_the_spatial_dimensions() -> None:
    spec = infer_head_spec(0, torch.Size((8, 5, 6, 16)), torch.Size((8, 10)), layout="channels_last")
    assert spec == HeadSpec("channels_last", 16, 10)
    head = LocalHead(spec)
    x = torch.randn(8, 5, 6, 16)
    torch.testing.assert_close(head(x), head.linear(x.mean((1, 2))))
    # The same shape without the layout is read channels first.
    assert infer_head_spec(0, torch.Size((8, 5, 6, 16)), torch.Size((8, 10))).in_features == 5


def test_head_specs_follow_each_blocks_layout() -> None:
    blocks = [BlockSpan(nn.Identity(), layout="channels_last"), nn.Identity(), nn.Identity()]
    shapes = [torch.Size((2, 4, 4, 8)), torch.Size((2, 8, 4, 4)), torch.Size((2, 3))]
    kinds = [(s.kind, s.in_features) for s in head_specs_for(shapes, blocks)]
    assert kinds == [("channels_last", 8), ("feature_map", 8)]


def test_unsupported_shapes_name_the_block_and_hint() -> None:
    with pytest.raises(ValueError, match=r"block 3's output of shape \(8, 16, 4, 4\).*HINT: return your own heads"):
        infer_head_spec(3, torch.Size((8, 16, 4, 4)), torch.Size((8, 10, 4, 4)))


def test_default_loss_is_cross_entropy_for_classes_and_mse_for_values() -> None:
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(default_local_loss(logits, labels), nn.functional.cross_entropy(logits, labels))
    values = torch.randn(4, 3)
    torch.testing.assert_close(default_local_loss(logits, values), nn.functional.mse_loss(logits, values))
    per_token = torch.randn(2, 5, 3)
    token_labels = torch.randint(0, 3, (2, 5))
    expected = nn.functional.cross_entropy(per_token.reshape(10, 3), token_labels.reshape(10))
    torch.testing.assert_close(default_local_loss(per_token, token_labels), expected)


def test_default_loss_rejects_mismatched_regression_targets() -> None:
    with pytest.raises(ValueError, match=r"target of shape \(4, 2\).*prediction of shape \(4, 3\)"):
        default_local_loss(torch.randn(4, 3), torch.randn(4, 2))
