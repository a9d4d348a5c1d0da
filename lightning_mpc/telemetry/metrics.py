"""A torchmetrics metric for per-block running ratios (epoch mean of losses, accuracy of every head).

One :class:`BlockwiseRatio` holds a numerator and a denominator per block and is updated once per step
with vectors for all blocks, instead of one metric object (and one ``update`` call) per head: the
per-step cost stays a handful of tensor operations whatever the depth, and nothing is synchronised
with the device until :meth:`~BlockwiseRatio.compute`. Being a ``torchmetrics.Metric``, it moves with
``.to(device)``, resets with ``reset()`` and sums its states across processes under DDP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["BlockwiseRatio", "block_hits"]


class BlockwiseRatio(Metric):
    """``sum(numerator) / sum(denominator)`` per block, accumulated over updates.

    For accuracy, the numerator is the number of correct predictions of each head and the
    denominator the number of predictions (``MulticlassAccuracy(average="micro")`` per head); for a
    mean loss, the numerator is the loss and the denominator 1 for blocks that have one.

    Args:
        num_blocks: length of the vectors.
        dtype: the states' dtype (``float64`` by default; use ``float32`` on devices without it).
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    numerator: Tensor
    denominator: Tensor

    def __init__(self, num_blocks: int, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.add_state("numerator", torch.zeros(num_blocks, dtype=dtype), dist_reduce_fx="sum")
        self.add_state("denominator", torch.zeros(num_blocks, dtype=dtype), dist_reduce_fx="sum")

    def update(self, numerator: Tensor, denominator: Tensor) -> None:  # type: ignore[override]
        """Add one step's vectors (length ``num_blocks``; ``0`` in the denominator leaves a block out)."""
        self.numerator += numerator.detach().to(self.numerator.dtype)
        self.denominator += denominator.detach().to(self.denominator.dtype)

    def compute(self) -> Tensor:
        """The ratio per block; ``nan`` for blocks that never had a denominator."""
        return torch.where(
            self.denominator > 0,
            self.numerator / self.denominator.clamp_min(1e-300 if self.numerator.dtype == torch.float64 else 1e-30),
            torch.full_like(self.numerator, float("nan")),
        )


def block_hits(predictions: Sequence[Tensor], target: Tensor) -> Tensor:
    """Correct top-1 predictions of several blocks against one target, in one batch of tensor operations.

    Args:
        predictions: one per block, all of the same shape: class indices shaped like ``target``, or scores
            (floating point) with the classes in the last dimension.
        target: integer classes.

    Returns:
        A vector with one count per prediction (on the target's device).
    """
    stacked = torch.stack(list(predictions))
    if stacked.is_floating_point():
        stacked = stacked.argmax(-1)
    hits = stacked.eq(target)
    return hits.sum(1) if target.dim() == 1 else hits.flatten(1).sum(1)
