"""Local heads (block output -> prediction) and the default local objective."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.core.blocks import Layout, block_layout
from lightning_mpc.core.memory import preserved_buffers

HeadKind = Literal["vector", "feature_map", "channels_last", "tokens", "per_token"]

__all__ = [
    "HeadSpec",
    "LocalHead",
    "block_output_shapes",
    "build_heads",
    "default_local_loss",
    "head_specs_for",
    "infer_head_spec",
    "infer_heads",
]


@dataclass(frozen=True)
class HeadSpec:
    """What a local head looks like; enough to rebuild it (stored in checkpoints).

    Attributes:
        kind: ``"vector"`` (linear on ``(N, F)``), ``"feature_map"`` (global average pool over every
            spatial dimension of ``(N, C, *spatial)``, then linear), ``"channels_last"`` (the same for
            ``(N, *spatial, C)``, Swin's layout), ``"tokens"`` (mean over the token
            dimension of ``(N, L, F)``, then linear) or ``"per_token"`` (linear on every token of
            ``(N, L, F)``, for models whose output is per token).
        in_features: features (channels) of the block output.
        out_features: outputs of the model.
    """

    kind: HeadKind
    in_features: int
    out_features: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-``dict`` form, for checkpoints and logger configs."""
        return asdict(self)


class LocalHead(nn.Module):
    """A small head that maps a block's output to a prediction shaped like the model's output."""

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        self.spec = spec
        self.linear = nn.Linear(spec.in_features, spec.out_features)

    def forward(self, x: Tensor) -> Tensor:
        if self.spec.kind == "feature_map":
            x = x.mean(dim=tuple(range(2, x.ndim)))
        elif self.spec.kind == "channels_last":
            x = x.mean(dim=tuple(range(1, x.ndim - 1)))
        elif self.spec.kind == "tokens":
            x = x.mean(dim=1)
        return self.linear(x)

    def extra_repr(self) -> str:
        return f"kind={self.spec.kind!r}"


def infer_head_spec(
    block_index: int, block_output: torch.Size, model_output: torch.Size, layout: Layout | None = None
) -> HeadSpec:
    """Choose a head for a block from its output shape and the model's output shape.

    Args:
        block_index: the block's position, for error messages.
        block_output: shape of the block's output, batch first.
        model_output: shape of the model's output (the last block's), batch first.
        layout: ``"channels_last"`` when the block's output is ``(N, *spatial, C)`` (see
            :func:`~lightning_mpc.core.blocks.block_layout`); channels first otherwise.

    Raises:
        ValueError: for shapes no built-in head covers, with a hint to supply heads.
    """
    hint = (
        "HINT: return your own heads from configure_heads() (an nn.ModuleList with one module per block "
        "but the last), or pass them to horizon_backward."
    )
    if len(model_output) == 2:
        out = model_output[1]
        if len(block_output) == 2:
            return HeadSpec("vector", block_output[1], out)
        if len(block_output) == 3:
            return HeadSpec("tokens", block_output[2], out)
        if len(block_output) >= 4 and layout == "channels_last":
            return HeadSpec("channels_last", block_output[-1], out)
        if len(block_output) >= 4:
            return HeadSpec("feature_map", block_output[1], out)
    elif len(model_output) == 3 and len(block_output) == 3 and block_output[1] == model_output[1]:
        return HeadSpec("per_token", block_output[2], model_output[2])
    raise ValueError(
        f"No built-in local head maps block {block_index}'s output of shape {tuple(block_output)} to the "
        f"model's output of shape {tuple(model_output)}: built-in heads produce (batch, outputs) from "
        f"vectors, feature maps or token sequences, or (batch, tokens, outputs) per token. {hint}"
    )


def block_output_shapes(blocks: Sequence[nn.Module], x: Tensor) -> list[torch.Size]:
    """The shape of every block's output when ``blocks`` run in turn on ``x`` (a few samples are enough).

    The blocks run in eval mode without grad (their modes and buffers are restored), as the strategies'
    dry run does.
    """
    modes = [block.training for block in blocks]
    shapes = []
    try:
        with torch.no_grad(), preserved_buffers(blocks):
            for block in blocks:
                block.eval()
            for block in blocks:
                x = block(x)
                shapes.append(x.shape)
    finally:
        for block, mode in zip(blocks, modes):
            block.train(mode)
    return shapes


def infer_heads(blocks: Sequence[nn.Module], x: Tensor) -> nn.ModuleList:
    """Automatic local heads for ``blocks``, sized by running them on ``x`` (:func:`block_output_shapes`).

    The heads follow each block's output shape and layout (:func:`head_specs_for`).
    """
    return build_heads(head_specs_for(block_output_shapes(blocks, x), blocks))


def build_heads(specs: Sequence[HeadSpec]) -> nn.ModuleList:
    """One :class:`LocalHead` per spec."""
    return nn.ModuleList(LocalHead(spec) for spec in specs)


def head_specs_for(block_output_shapes: Sequence[torch.Size], blocks: Sequence[nn.Module] | None = None) -> list[HeadSpec]:
    """A head spec for every block but the last, from the blocks' output shapes (the last one is the model's).

    Args:
        block_output_shapes: every block's output shape, batch first.
        blocks: the blocks, when their outputs may be channels last (see
            :func:`~lightning_mpc.core.blocks.block_layout`); channels first otherwise.
    """
    model_output = block_output_shapes[-1]
    return [
        infer_head_spec(index, shape, model_output, None if blocks is None else block_layout(blocks[index]))
        for index, shape in enumerate(block_output_shapes[:-1])
    ]


def default_local_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for integer targets, mean squared error for floating-point targets.

    Integer targets may carry extra dimensions (per-token classes ``(N, L)`` with predictions
    ``(N, L, C)``).

    Raises:
        TypeError: if ``target`` is not a tensor.
        ValueError: if a floating-point target's shape differs from the prediction's.
    """
    if not isinstance(target, Tensor):
        raise TypeError(
            f"The default local loss needs a tensor target, got {type(target).__name__}. "
            "HINT: override local_loss(prediction, batch) in your LightningModule."
        )
    if not target.is_floating_point():
        if target.ndim == prediction.ndim and target.shape[-1] == 1 and prediction.shape[-1] > 1:
            raise ValueError(
                f"The default local loss got integer class targets of shape {tuple(target.shape)} for local "
                f"predictions of shape {tuple(prediction.shape)}: cross-entropy needs one class index per sample, "
                f"shape {tuple(target.shape[:-1])}. HINT: squeeze the targets in your dataset (y.squeeze(-1)), or "
                "override local_loss(prediction, batch) in your LightningModule."
            )
        if prediction.ndim == target.ndim + 1 and prediction.ndim > 2:
            return F.cross_entropy(prediction.flatten(0, -2), target.flatten())
        return F.cross_entropy(prediction, target)
    if target.shape != prediction.shape:
        if target.numel() == prediction.numel():
            target = target.reshape(prediction.shape)
        else:
            raise ValueError(
                f"Regression target of shape {tuple(target.shape)} does not match the local prediction of "
                f"shape {tuple(prediction.shape)}. HINT: override local_loss(prediction, batch)."
            )
    return F.mse_loss(prediction, target.to(prediction.dtype))
