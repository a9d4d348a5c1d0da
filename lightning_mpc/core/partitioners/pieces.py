"""Small modules for the functional steps a model's ``forward`` takes between its submodules.

A partitioner lists them in a :class:`~lightning_mpc.core.blocks.BlockSpan` before the entry module of
the block whose graph they belong to, so that calling the blocks in order computes what the model's
``forward`` computes. The model's forward never calls them: inside it, the model's own code does the same
work. A piece that uses one of the model's bare parameters (a class token, a position embedding)
registers that same ``Parameter`` object, so the block's ``parameters()`` include it and the horizon rule
trains it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AddEmbedding", "FirstToken", "ModelMethod", "PrependToken", "SpatialMean"]


class SpatialMean(nn.Module):
    """``x.mean([2, 3])``: global average pooling written as a mean (ShuffleNet, MNASNet)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean([2, 3])


class FirstToken(nn.Module):
    """``x[:, 0]``: the class token of a token sequence (ViT's classifier input)."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0]


class PrependToken(nn.Module):
    """``cat([token.expand(N, -1, -1), x], dim=1)``: a learned token put in front of the sequence.

    Args:
        token: the model's own ``(1, 1, D)`` parameter (registered here too, the same object).
    """

    def __init__(self, token: nn.Parameter) -> None:
        super().__init__()
        self.token = token

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)


class AddEmbedding(nn.Module):
    """``x + embedding``: a learned position embedding.

    Args:
        embedding: the model's own parameter (registered here too, the same object).
    """

    def __init__(self, embedding: nn.Parameter) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, x: Tensor) -> Tensor:
        return x + self.embedding


class ModelMethod(nn.Module):
    """Calls one of the model's own methods (``model.forward_head(x)``), so a block reuses the model's code.

    The model is referenced, not registered: the piece's parameters are only those it is told the method
    uses (``owns`` and ``parameters``), so the block that holds it trains exactly those.

    Args:
        model: the model whose method to call.
        method: the method's name; it takes one tensor and returns one.
        owns: the submodules the method calls (registered here, for their parameters).
        parameters: the bare parameters the method uses, by name (``None`` values are skipped).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str,
        owns: Iterable[nn.Module] = (),
        parameters: Mapping[str, nn.Parameter | None] | None = None,
    ) -> None:
        super().__init__()
        if not callable(getattr(model, method, None)):
            raise AttributeError(
                f"{type(model).__name__} has no method {method!r}. HINT: this partitioner does not fit this "
                "version of the model; register your own with lightning_mpc.register_partitioner."
            )
        self._model = (model,)  # a tuple: not registered as a submodule
        self.method = method
        self.owned = nn.ModuleList(owns)
        for name, parameter in (parameters or {}).items():
            if parameter is not None:
                self.register_parameter(name, parameter)

    def forward(self, x: Tensor) -> Any:
        return getattr(self._model[0], self.method)(x)

    def extra_repr(self) -> str:
        return f"{type(self._model[0]).__name__}.{self.method}"
