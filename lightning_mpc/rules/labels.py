"""Class labels for rules that need them (Forward-Forward embeds them, Scalable FF scores every class)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["class_count", "class_labels"]


def class_count(owner: str, output_shapes: Sequence[Any], requested: int | None, rule: str) -> int:
    """The number of classes: ``requested``, else the size of the last block's ``(N, C)`` output.

    Args:
        owner: the module's name, for the message.
        output_shapes: every block's output shape from the dry run.
        requested: the rule's ``num_classes`` argument (``None``: read it from the model).
        rule: the rule's name, for the message.

    Raises:
        ValueError: if ``requested`` is ``None`` and the last block does not output ``(N, C)`` with ``C >= 2``.
    """
    if requested is not None:
        return requested
    last = output_shapes[-1] if output_shapes else None
    if isinstance(last, torch.Size) and len(last) == 2 and last[1] >= 2:
        return int(last[1])
    raise ValueError(
        f"{owner}: {rule} needs the number of classes, and the last block's output {last} is not (batch, classes). "
        "HINT: end the network with a classifier block, or pass num_classes to the rule."
    )


def class_labels(batch: Any, num_classes: int, rule: str) -> Tensor:
    """The integer class labels ``(N,)`` of a training batch (``batch[1]``).

    Raises:
        TypeError: if ``batch[1]`` is missing or not a one-dimensional integer tensor.
        ValueError: if a label lies outside ``0..num_classes - 1``.
    """
    from lightning_mpc.lightning.mixin import batch_target  # the Lightning layer imports the rules

    target = batch_target(batch)
    if not isinstance(target, Tensor) or target.ndim != 1 or target.is_floating_point() or target.dtype == torch.bool:
        described = f"a {target.dtype} tensor of shape {tuple(target.shape)}" if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(
            f"{rule} trains on class labels, but batch[1] is {described}. "
            "HINT: the batch must be (inputs, labels) with integer labels of shape (batch,)."
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"{rule}: labels must lie in 0..{num_classes - 1}, got {int(target.min())}..{int(target.max())}. "
            "HINT: check num_classes and the targets in batch[1]."
        )
    return target
