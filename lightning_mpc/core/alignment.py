"""Alignment between two sets of block gradients: the cosine a rule's update makes with back-propagation's.

One routine for the whole package: the telemetry's per-block alignment and the horizon selection's ``cos^2``
both come from :func:`gradient_alignment`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Alignment", "Gradients", "gradient_alignment"]

Gradients = Sequence[Sequence[Tensor | None]]
"""One list of gradients per block (``None`` means zero)."""


@dataclass(frozen=True)
class Alignment:
    """Cosines between the horizon rule's update and back-propagation's gradient.

    Attributes:
        blocks: one cosine per block over its parameters; ``nan`` for a block without trainable
            parameters or whose back-propagation gradient is zero, ``0`` when only the update is zero.
        total: the cosine of the two gradients concatenated over every block's parameters.
    """

    blocks: list[float]
    total: float


def _float_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _cosine(dot: float, update_sq: float, reference_sq: float) -> float:
    if reference_sq == 0.0 or not math.isfinite(reference_sq):
        return float("nan")
    if update_sq == 0.0:
        return 0.0
    return dot / math.sqrt(update_sq * reference_sq)


def gradient_alignment(
    update: Gradients,
    reference: Gradients,
    parameters: Sequence[Sequence[nn.Parameter]] | None = None,
) -> Alignment:
    """Per-block and whole-network cosine between two sets of block gradients.

    Args:
        update: the horizon rule's gradients, one list per block (``None`` means zero).
        reference: back-propagation's gradients, same structure.
        parameters: the parameters the gradients belong to; when given, a parameter shared by
            several blocks counts once in :attr:`Alignment.total`.
    """
    if len(update) != len(reference):
        raise ValueError(f"Got gradients for {len(update)} and {len(reference)} blocks; they must match.")
    rows: list[list[float]] = []
    seen: set[int] = set()
    total: Tensor | None = None
    for index, (upd, ref) in enumerate(zip(update, reference)):
        if len(upd) != len(ref):
            raise ValueError(f"Block {index}: {len(upd)} update gradients against {len(ref)} reference gradients.")
        terms: Tensor | None = None
        for position, (u, r) in enumerate(zip(upd, ref)):
            like = u if u is not None else r
            if like is None:
                continue
            dtype = _float_dtype(like.device)
            u64 = torch.zeros_like(like, dtype=dtype) if u is None else u.detach().to(dtype)
            r64 = torch.zeros_like(like, dtype=dtype) if r is None else r.detach().to(like.device, dtype)
            part = torch.stack([(u64 * r64).sum(), (u64 * u64).sum(), (r64 * r64).sum()]).cpu().double()
            terms = part if terms is None else terms + part
            key = id(parameters[index][position]) if parameters is not None else None
            if key is None or key not in seen:
                total = part if total is None else total + part
            if key is not None:
                seen.add(key)
        rows.append([0.0, 0.0, 0.0] if terms is None else terms.tolist())
    per_block = [_cosine(*row) if (u or r) else float("nan") for row, u, r in zip(rows, update, reference)]
    total_terms = [0.0, 0.0, 0.0] if total is None else total.tolist()
    return Alignment(blocks=per_block, total=_cosine(*total_terms))
