"""Scalable Forward-Forward (Krutsylo 2025, arXiv 2501.03176) as pure PyTorch functions, no Lightning.

Every block ``k`` but the last gets a goodness head: the block's output is layer-normalised (over every
value of a sample, no affine parameters) and a small convolution maps it to one channel ``a_c`` per class;
the goodness of class ``c`` is the mean over positions of ``a_c^2``. One pass serves every class: the true
class is the positive, all others are negatives, and the block's loss is the cross-entropy over the goodness
vector (``loss="ce"``), or the log-sum-exp margin variant ``softplus(LSE_{c != y} z_c - z_y + margin)``
(``loss="margin"``; with ``margin = 0`` it equals the cross-entropy), where the logits ``z`` are
``log(g + 1e-6)`` (``logits="log"``: the cross-entropy of the true class's share of the total goodness,
invariant to the goodness's scale) or the goodness itself (``logits="raw"``). Back-propagation runs inside each block
(block and head) and never crosses blocks: a block's input is the detached output of the one before.

The last block (the model's classifier) has no goodness head; it learns from the model's own loss on its
detached input (:func:`sff_backward`'s ``final_loss``).

Inference averages the blocks' goodness votes (``softmax(z_k)`` averaged over the blocks; the log of the
average is returned, so that its arg-max is the vote and a cross-entropy on it is the ensemble's
negative log-likelihood), or takes the last block's vote only.

Example::

    heads = build_goodness_heads(output_shapes[:-1], num_classes=10)
    losses = sff_backward(blocks, heads, x, y, final_loss=F.cross_entropy)
    optimizer.step()
    predicted = sff_votes(blocks, heads, x).argmax(dim=1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.core.engine import _no_autocast
from lightning_mpc.core.observer import EngineObserver

__all__ = [
    "GoodnessHead",
    "GoodnessHeadSpec",
    "SFFLoss",
    "Vote",
    "build_goodness_heads",
    "class_goodness",
    "goodness_head_spec",
    "goodness_logits",
    "sff_backward",
    "sff_block_loss",
    "sff_loss",
    "sff_votes",
    "vote_scores",
]

SFFLoss = Literal["ce", "margin"]
Logits = Literal["log", "raw"]
LOG_EPS = 1e-6
"""Added to the goodness before its logarithm (``logits="log"``)."""
Vote = Literal["average", "last"]
LossScale = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class GoodnessHeadSpec:
    """What a goodness head looks like; enough to rebuild it (stored in checkpoints).

    Attributes:
        channels: channels (features) of the block output, ``shape[1]``.
        num_classes: output channels, one per class.
        spatial: spatial dimensions of the block output: 0 (``(N, F)``, a linear map), 1 (``(N, C, L)``) or
            2 (``(N, C, H, W)``).
        kernel_size: the convolution's kernel (odd; ``padding = kernel_size // 2`` keeps the size).
        normalized_shape: the shape layer normalisation normalises over (``shape[1:]``).
    """

    channels: int
    num_classes: int
    spatial: int
    kernel_size: int
    normalized_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain-``dict`` form, for checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GoodnessHeadSpec:
        """The spec :meth:`to_dict` gave."""
        return cls(**{**values, "normalized_shape": tuple(values["normalized_shape"])})


def goodness_head_spec(index: int, shape: torch.Size, num_classes: int, kernel_size: int = 3) -> GoodnessHeadSpec:
    """The goodness head of a block whose output has ``shape`` (batch first).

    Raises:
        ValueError: for outputs other than ``(N, F)``, ``(N, C, L)`` and ``(N, C, H, W)``.
    """
    if not isinstance(shape, torch.Size) or not 2 <= len(shape) <= 4:
        raise ValueError(
            f"Block {index} outputs {shape}; Scalable FF's built-in goodness heads take (N, F), (N, C, L) or "
            "(N, C, H, W). HINT: return your own heads from configure_heads() (one module per block but the "
            "last, mapping the block's output to (N, classes, ...)), or cut the network elsewhere."
        )
    return GoodnessHeadSpec(int(shape[1]), num_classes, len(shape) - 2, kernel_size, tuple(int(s) for s in shape[1:]))


class GoodnessHead(nn.Module):
    """Layer normalisation (no affine parameters) then a convolution to one channel per class.

    The output ``a`` has shape ``(N, classes, *positions)``; :func:`class_goodness` turns it into ``(N, classes)``.
    """

    def __init__(self, spec: GoodnessHeadSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.spatial == 0:
            self.conv: nn.Module = nn.Linear(spec.channels, spec.num_classes)
        else:
            conv = nn.Conv1d if spec.spatial == 1 else nn.Conv2d
            self.conv = conv(spec.channels, spec.num_classes, spec.kernel_size, padding=spec.kernel_size // 2)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(F.layer_norm(h, h.shape[1:]))

    def extra_repr(self) -> str:
        return f"spatial={self.spec.spatial}, normalized_shape={self.spec.normalized_shape}"


def build_goodness_heads(shapes: Sequence[torch.Size], num_classes: int, kernel_size: int = 3) -> nn.ModuleList:
    """One :class:`GoodnessHead` per block output shape (the blocks but the last)."""
    return nn.ModuleList(GoodnessHead(goodness_head_spec(i, s, num_classes, kernel_size)) for i, s in enumerate(shapes))


def class_goodness(a: Tensor) -> Tensor:
    """``g_c = mean over positions of a_c^2``: ``(N, C, *positions) -> (N, C)`` (``(N, C)`` is squared)."""
    squares = a.pow(2)
    return squares.flatten(2).mean(dim=2) if squares.ndim > 2 else squares


def goodness_logits(goodness: Tensor, logits: Logits = "log") -> Tensor:
    """The logits the block loss runs over: ``log(g + 1e-6)`` (``"log"``) or the goodness itself (``"raw"``)."""
    if logits == "log":
        return torch.log(goodness + LOG_EPS)
    if logits == "raw":
        return goodness
    raise ValueError(f"Scalable FF logits must be 'log' or 'raw', got {logits!r}. HINT: use logits='log'.")


def sff_loss(
    goodness: Tensor, labels: Tensor, kind: SFFLoss = "ce", margin: float = 1.0, logits: Logits = "log"
) -> Tensor:
    """The block loss over the goodness vector: the true class is the positive, every other class a negative.

    With ``z`` the logits (:func:`goodness_logits`): ``"ce"`` is ``cross_entropy(z, y)``; ``"margin"`` is
    ``mean softplus(LSE_{c != y} z_c - z_y + margin)``, which is the cross-entropy at ``margin = 0``. With
    ``logits="log"`` the cross-entropy is ``-log(g_y / sum_c g_c)``: the share of the true class in the total
    goodness, invariant to the goodness's scale; with ``"raw"`` the goodness are the logits themselves.

    Args:
        goodness: ``(N, C)``, non-negative.
        labels: ``(N,)`` integer classes.
        kind: ``"ce"`` or ``"margin"``.
        margin: the margin of ``"margin"``.
        logits: ``"log"`` or ``"raw"``.
    """
    z = goodness_logits(goodness, logits)
    if kind == "ce":
        return F.cross_entropy(z, labels)
    if kind == "margin":
        positive = z.gather(1, labels.view(-1, 1)).squeeze(1)
        others = z.scatter(1, labels.view(-1, 1), float("-inf"))
        return F.softplus(torch.logsumexp(others, dim=1) - positive + margin).mean()
    raise ValueError(f"Scalable FF loss must be 'ce' or 'margin', got {kind!r}. HINT: use loss='ce'.")


def sff_block_loss(
    output: Tensor,
    head: nn.Module,
    labels: Tensor,
    kind: SFFLoss = "ce",
    margin: float = 1.0,
    logits: Logits = "log",
    *,
    scale: LossScale | None = None,
    observer: EngineObserver | None = None,
    index: int = 0,
) -> tuple[Tensor, Tensor]:
    """Score a block's output with its goodness head and back-propagate the loss through head and block.

    Args:
        output: the block's output, attached to the block's graph (which starts at a detached input).
        head: the block's goodness head.
        labels: ``(N,)`` classes.
        kind: the loss (see :func:`sff_loss`).
        margin: the margin of ``"margin"``.
        logits: ``"log"`` or ``"raw"`` (see :func:`sff_loss`).
        scale: applied to the loss before its backward.
        observer: receives ``local_loss`` and the backward events.
        index: the block's index, for the observer.

    Returns:
        ``(loss, goodness)``, both detached.
    """
    goodness = class_goodness(head(output))
    loss = sff_loss(goodness, labels, kind, margin, logits)
    if observer is not None:
        observer.local_loss(index, goodness, loss)
    if loss.requires_grad:
        if observer is not None:
            observer.backward_started(index)
        with _no_autocast(loss.device):
            (scale(loss) if scale is not None else loss).backward()
        if observer is not None:
            observer.backward_finished(index)
    return loss.detach(), goodness.detach()


def sff_backward(
    blocks: Sequence[nn.Module],
    heads: Sequence[nn.Module],
    x: Tensor,
    labels: Tensor,
    kind: SFFLoss = "ce",
    margin: float = 1.0,
    logits: Logits = "log",
    *,
    final_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    scale: LossScale | None = None,
    observer: EngineObserver | None = None,
) -> list[Tensor]:
    """Accumulate Scalable FF's block-wise gradients into ``.grad``; one block's graph at a time.

    Block ``k < T - 1`` runs on the detached output of block ``k - 1`` and learns, with its head, from its
    goodness loss; the last block runs on the detached output of block ``T - 2`` and learns from
    ``final_loss(output, labels)`` when given.

    Args:
        blocks: the blocks ``0..T-1``.
        heads: ``T - 1`` goodness heads.
        x: block 0's input.
        labels: ``(N,)`` classes.
        kind: the block loss (see :func:`sff_loss`).
        margin: the margin of ``"margin"``.
        logits: ``"log"`` or ``"raw"`` (see :func:`sff_loss`).
        final_loss: the loss of the last block's output (the model's own), or ``None`` to leave it untrained.
        scale: applied to every loss before its backward.
        observer: receives the events of every block.

    Returns:
        The block losses (and the final loss last, when given), detached and unscaled.

    Raises:
        ValueError: if the number of heads is not ``T - 1``.
    """
    blocks = list(blocks)
    if len(heads) != len(blocks) - 1:
        raise ValueError(
            f"sff_backward: {len(heads)} goodness heads for {len(blocks)} blocks. HINT: one head per block but the "
            "last (the last block is the model's classifier)."
        )
    losses: list[Tensor] = []
    for index, block in enumerate(blocks):
        if observer is not None:
            observer.block_started(index)
        out = block(x.detach())
        if observer is not None:
            observer.block_finished(index, out)
        if index < len(heads):
            loss, _ = sff_block_loss(
                out, heads[index], labels, kind, margin, logits, scale=scale, observer=observer, index=index
            )
            losses.append(loss)
        elif final_loss is not None:
            loss = final_loss(out, labels)
            with _no_autocast(loss.device):
                (scale(loss) if scale is not None else loss).backward()
            losses.append(loss.detach())
        x = out.detach()
    return losses


def vote_scores(goodness: Sequence[Tensor], vote: Vote = "average", logits: Logits = "log") -> Tensor:
    """Class scores from the blocks' goodness vectors: the log of the averaged block probabilities
    ``softmax(z_k)`` (``"average"``), or ``log_softmax(z)`` of the last block (``"last"``); ``z`` are the logits
    the blocks were trained on (:func:`goodness_logits`)."""
    if not goodness:
        raise ValueError("vote_scores got no goodness vectors. HINT: the network needs at least one block with a head.")
    if vote == "last":
        return F.log_softmax(goodness_logits(goodness[-1].float(), logits), dim=1)
    if vote != "average":
        raise ValueError(f"vote must be 'average' or 'last', got {vote!r}. HINT: use vote='average'.")
    stacked = torch.stack([F.log_softmax(goodness_logits(g.float(), logits), dim=1) for g in goodness])
    return torch.logsumexp(stacked, dim=0) - math.log(len(goodness))


@torch.no_grad()
def sff_votes(
    blocks: Sequence[nn.Module], heads: Sequence[nn.Module], x: Tensor, vote: Vote = "average", logits: Logits = "log"
) -> Tensor:
    """The class scores of Scalable FF's inference (see :func:`vote_scores`): ``(N, C)``; the arg-max is the class."""
    goodness: list[Tensor] = []
    for index, head in enumerate(heads):
        x = blocks[index](x)
        goodness.append(class_goodness(head(x)))
    return vote_scores(goodness, vote, logits)
