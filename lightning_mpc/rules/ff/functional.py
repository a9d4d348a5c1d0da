"""Forward-Forward (Hinton 2022, arXiv 2212.13345) as pure PyTorch functions, no Lightning.

Every FF layer ``l`` (a block of the network) is trained on its own: its input is length-normalised and
detached (no gradient ever crosses a layer boundary), its goodness is ``G = sum_j h_j^2`` (or the mean form
``G = mean_j h_j^2``) of its output ``h``, and its loss is the logistic loss around a threshold ``theta``:
positive data (the input with the true label embedded) should have ``G > theta``, negative data (the same
input with a wrong label) ``G < theta``::

    L_l = mean over the 2N samples of softplus(-s * alpha * (G - theta)),   s = +1 positive, -1 negative data

that is the binary cross-entropy of ``p(positive) = sigmoid(alpha * (G - theta))`` (Hinton: ``alpha = 1``). Optional peer normalisation adds
``w * mean_j (mean(r) - r_j)^2`` where ``r`` is a running mean (momentum ``m``) of every unit's activity on
positive data, which keeps units from dying or dominating.

Prediction runs the input once per label ``c`` (label ``c`` embedded) and picks the label with the largest
goodness accumulated over the layers (by default all but the first, as in Hinton's paper).

:func:`ff_backward` accumulates these gradients into ``.grad`` of every layer's parameters and returns the
per-layer losses; :func:`goodness_scores` gives the accumulated goodness of every label.

Example::

    x_pos = embed_label(x, y, 10)
    x_neg = embed_label(x, random_negative_labels(y, 10, generator), 10)
    losses = ff_backward(layers, x_pos, x_neg, FFObjective())
    optimizer.step()
    predicted = goodness_scores(layers, x, 10).argmax(dim=1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.core.observer import EngineObserver

__all__ = [
    "FFLayerResult",
    "FFObjective",
    "Goodness",
    "ScoreLayers",
    "embed_label",
    "ff_backward",
    "ff_backward_labels",
    "ff_layer_step",
    "goodness_scores",
    "hardest_negative_labels",
    "length_normalize",
    "logistic_loss",
    "peer_loss",
    "random_negative_labels",
    "scored_layers",
    "squared_activity",
]

Goodness = Literal["sum", "mean"]
ScoreLayers = Literal["all", "all_but_first"]
LossScale = Callable[[Tensor], Tensor]


def embed_label(x: Tensor, labels: Tensor | None, num_classes: int, value: float = 1.0) -> Tensor:
    """``x`` with a label written over the first ``num_classes`` values of every sample.

    The values are taken in row-major order of each sample (``x[i].flatten()``): the first ``num_classes``
    features of a vector, or the first pixels of the top row of channel 0 of an image, as in Hinton's MNIST
    experiments (the image border carries no information there).

    Args:
        x: inputs, batch first, at least ``num_classes`` values per sample.
        labels: integer labels ``(N,)``; ``None`` writes the neutral label (``value / num_classes`` everywhere).
        num_classes: ``C``.
        value: the value of the label's one-hot entry (the others are 0).

    Returns:
        A new tensor; ``x`` is not modified.

    Raises:
        ValueError: if a sample has fewer than ``num_classes`` values or a label is out of range.
    """
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] < num_classes:
        raise ValueError(
            f"embed_label: an input of shape {tuple(x.shape)} has {flat.shape[1]} values per sample, fewer than the "
            f"{num_classes} classes to embed. HINT: Forward-Forward writes the label over the first values of the "
            "network's input; give it an input with at least as many values as classes."
        )
    if labels is None:
        code = torch.full((flat.shape[0], num_classes), value / num_classes, dtype=x.dtype, device=x.device)
    else:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"embed_label: labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}. "
                "HINT: check num_classes and the targets in batch[1]."
            )
        code = F.one_hot(labels.long(), num_classes).to(dtype=x.dtype) * value
    out = flat.clone()
    out[:, :num_classes] = code
    return out.view_as(x)


def length_normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``x`` divided, sample by sample, by its root mean square (length ``sqrt(D)`` for ``D`` values per sample).

    The direction of a layer's activity vector, not its length (which is the goodness the previous layer
    was trained on), is what the next layer sees.
    """
    flat = x.reshape(x.shape[0], -1)
    rms = flat.pow(2).mean(dim=1, keepdim=True).sqrt()
    return (flat / (rms + eps)).view_as(x)


def random_negative_labels(labels: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A wrong label for every sample, drawn uniformly from the ``num_classes - 1`` wrong ones.

    Args:
        labels: the true labels ``(N,)``.
        num_classes: ``C`` (at least 2).
        generator: the random generator (on the CPU; the draws are moved to ``labels.device``).
    """
    shift = torch.randint(1, num_classes, labels.shape, generator=generator, device="cpu")
    return (labels + shift.to(labels.device)) % num_classes


class _SquaredActivity(torch.autograd.Function):
    """``factor * sum_j h_j^2`` per sample, with a backward that allocates one tensor (``2 * factor * g * h``).

    Autograd's own ``h.pow(2).sum(1)`` materialises three activation-sized tensors in its backward (the
    expanded gradient, ``2 * h`` and their product); for a layer whose activations dominate a step this is
    most of the step's peak memory.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(h)
        ctx.factor = factor
        flat = h.reshape(h.shape[0], -1)
        return torch.linalg.vecdot(flat, flat, dim=1) * factor

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (h,) = ctx.saved_tensors
        scale = (grad * (2.0 * ctx.factor)).view(-1, *([1] * (h.ndim - 1)))
        return h * scale, None


def squared_activity(h: Tensor, mean: bool = False) -> Tensor:
    """``sum_j h_j^2`` (or the mean) of every sample of ``h`` (all but the batch dimension), shape ``(N,)``."""
    factor = 1.0 / h[0].numel() if mean else 1.0
    return _SquaredActivity.apply(h, factor)


@dataclass(frozen=True)
class FFObjective:
    """The goodness and loss of every FF layer.

    Attributes:
        goodness: ``"sum"`` (``G = sum_j h_j^2``, Hinton's form) or ``"mean"`` (``G = mean_j h_j^2``).
        threshold: ``theta``; ``None`` means the number of units of the layer for ``"sum"`` and ``1.0`` for
            ``"mean"`` (the two then put the boundary at the same activity, a mean square of 1).
        eps: added to the root mean square when length-normalising a layer's input.
        sharpness: ``alpha`` in ``p(positive) = sigmoid(alpha * (G - theta))`` (Hinton's form has 1; with the
            mean form, ``alpha`` equal to the number of units gives the sum form's logit).
        peer_weight: weight ``w`` of peer normalisation (0 switches it off).
        peer_momentum: momentum ``m`` of the running mean activity used by peer normalisation.
        label_value: the value of the label's one-hot entry in the input (see :func:`embed_label`).
    """

    goodness: Goodness = "sum"
    threshold: float | None = None
    eps: float = 1e-8
    sharpness: float = 1.0
    peer_weight: float = 0.0
    peer_momentum: float = 0.9
    label_value: float = 1.0

    def __post_init__(self) -> None:
        if self.goodness not in ("sum", "mean"):
            raise ValueError(f"goodness must be 'sum' or 'mean', got {self.goodness!r}. HINT: use goodness='sum'.")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(
                f"threshold must be positive (goodness is a sum of squares), got {self.threshold}. "
                "HINT: leave it None for the default (units for 'sum', 1.0 for 'mean')."
            )
        if not self.sharpness > 0:
            raise ValueError(f"sharpness must be positive, got {self.sharpness}. HINT: use sharpness=1.0 (Hinton's logit).")
        if self.peer_weight < 0:
            raise ValueError(f"peer_weight must be 0 or more, got {self.peer_weight}. HINT: 0 switches it off, 0.03 is usual.")
        if not 0 <= self.peer_momentum < 1:
            raise ValueError(f"peer_momentum must lie in [0, 1), got {self.peer_momentum}. HINT: use 0.9.")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}. HINT: use 1e-8.")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (logged as hyper-parameters)."""
        return asdict(self)

    def of(self, h: Tensor) -> Tensor:
        """The goodness of every sample of a layer's output ``h`` (shape ``(N,)``)."""
        return squared_activity(h, mean=self.goodness == "mean")

    def theta(self, h: Tensor) -> float:
        """The threshold for a layer whose output is ``h``."""
        if self.threshold is not None:
            return float(self.threshold)
        return float(h[0].numel()) if self.goodness == "sum" else 1.0

    def logits(self, h: Tensor) -> Tensor:
        """``alpha * (G - theta)`` of every sample: the logit of ``p(positive)``."""
        logits = self.of(h) - self.theta(h)
        return logits if self.sharpness == 1 else self.sharpness * logits

    def signed_logits(self, h: Tensor, num_positive: int) -> Tensor:
        """``s * alpha * (G - theta)`` of stacked outputs: ``s = +1`` for the first ``num_positive``, ``-1`` after."""
        logits = self.logits(h)
        return torch.cat([logits[:num_positive], -logits[num_positive:]])

    def loss(self, h_pos: Tensor, h_neg: Tensor) -> Tensor:
        """The logistic loss of a layer over its ``2N`` outputs on positive and negative data."""
        return logistic_loss(self.signed_logits(torch.cat([h_pos, h_neg]), h_pos.shape[0]))


def logistic_loss(signed_logits: Tensor) -> Tensor:
    """``mean softplus(-z)``: the binary cross-entropy of ``sigmoid(z)`` against "right side of the threshold"."""
    return F.softplus(-signed_logits).mean()


def peer_loss(h_pos: Tensor, running_mean: Tensor, momentum: float) -> tuple[Tensor, Tensor]:
    """Peer normalisation of one layer: ``mean_j (mean(r) - r_j)^2`` with ``r = m * r_old + (1 - m) * mean_batch h``.

    Args:
        h_pos: the layer's output on positive data (attached to its graph).
        running_mean: ``r_old``, one value per unit (the flattened per-sample output), not differentiated.
        momentum: ``m``.

    Returns:
        ``(loss, r)``; ``r`` is detached (store it as the new running mean).
    """
    activity = h_pos.reshape(h_pos.shape[0], -1).mean(dim=0)
    r = momentum * running_mean.detach() + (1 - momentum) * activity
    return (r.mean() - r).pow(2).mean(), r.detach()


@dataclass
class FFLayerResult:
    """What one layer's FF step produced (everything detached).

    Attributes:
        loss: the layer's FF loss (logistic, plus peer normalisation when on), before weighting and scaling.
        output: the layer's output on the stacked data, positive samples first (the next layer's input).
        goodness_pos: mean goodness on positive data.
        goodness_neg: mean goodness on negative data.
        separation: fraction of samples on the right side of the threshold (positive above, negative below).
    """

    loss: Tensor
    output: Tensor
    goodness_pos: float
    goodness_neg: float
    separation: float


def _normalize_(x: Tensor, eps: float) -> Tensor:
    """:func:`length_normalize` in place (``x`` must be a tensor the caller owns and no graph has saved)."""
    flat = x.view(x.shape[0], -1) if x.is_contiguous() else None
    if flat is None:
        return length_normalize(x, eps)
    rms = flat.pow(2).mean(dim=1, keepdim=True).sqrt_().add_(eps)
    flat.div_(rms)
    return x


def ff_layer_step(
    layer: nn.Module,
    stacked: Tensor,
    num_positive: int,
    objective: FFObjective,
    *,
    weight: float = 1.0,
    peer_mean: Tensor | None = None,
    scale: LossScale | None = None,
    observer: EngineObserver | None = None,
    index: int = 0,
) -> FFLayerResult:
    """Train one FF layer on positive and negative data stacked in one batch (positive samples first).

    The layer runs once on the length-normalised, detached ``stacked`` data and its loss is back-propagated
    into the layer's ``.grad`` (accumulated) before this returns, so the layer's graph is released here.

    Args:
        layer: the layer (block).
        stacked: the layer's input on the positive then the negative samples (the previous layer's output or
            the labelled network input). **Normalised in place** when it requires no gradient (the caller
            hands its buffer over); otherwise a normalised copy is made.
        num_positive: how many of the stacked samples are positive.
        objective: goodness, threshold and peer normalisation.
        weight: the loss is multiplied by it before the backward (``0`` computes but trains nothing).
        peer_mean: the layer's running mean activity (a buffer, updated in place) when peer normalisation is on.
        scale: applied to the loss before its backward (gradient accumulation, AMP loss scaling).
        observer: receives ``block_started``, ``block_finished``, ``local_loss`` and the backward events.
        index: the layer's index, for the observer.
    """
    n = num_positive
    if stacked.requires_grad:
        inputs = length_normalize(stacked.detach(), objective.eps)
    else:
        inputs = _normalize_(stacked, objective.eps)
    if observer is not None:
        observer.block_started(index)
    h = layer(inputs)
    del inputs
    if not isinstance(h, Tensor):
        raise TypeError(
            f"FF layer {index} ({type(layer).__name__}) returned a {type(h).__name__}, not a tensor. "
            "HINT: every FF layer must map a tensor to a tensor."
        )
    signed = objective.signed_logits(h, n)
    loss = logistic_loss(signed)
    if objective.peer_weight > 0 and peer_mean is not None:
        peer, updated = peer_loss(h[:n], peer_mean, objective.peer_momentum)
        loss = loss + objective.peer_weight * peer
        with torch.no_grad():
            peer_mean.copy_(updated)
    if observer is not None:
        observer.block_finished(index, h)
        observer.local_loss(index, signed, loss)
    if loss.requires_grad and weight != 0:
        weighted = loss * weight if weight != 1 else loss
        if observer is not None:
            observer.backward_started(index)
        (scale(weighted) if scale is not None else weighted).backward()
        if observer is not None:
            observer.backward_finished(index)
    with torch.no_grad():
        goodness = objective.of(h)
        result = FFLayerResult(
            loss=loss.detach(),
            output=h.detach(),
            goodness_pos=float(goodness[:n].mean()),
            goodness_neg=float(goodness[n:].mean()),
            separation=float((signed > 0).float().mean()),
        )
    return result


def ff_backward(
    layers: Sequence[nn.Module],
    x_pos: Tensor,
    x_neg: Tensor,
    objective: FFObjective | None = None,
    *,
    layer_weights: Sequence[float] | None = None,
    peer_means: Sequence[Tensor] | None = None,
    scale: LossScale | None = None,
    observer: EngineObserver | None = None,
    on_layer_done: Callable[[int, FFLayerResult], None] | None = None,
) -> list[Tensor]:
    """Accumulate the Forward-Forward gradient of every layer into its ``.grad``; one layer's graph at a time.

    Layer ``l`` runs on the length-normalised, detached outputs of layer ``l - 1`` (layer 0 on ``x_pos`` and
    ``x_neg``), and its loss is back-propagated into its own parameters only, before layer ``l + 1`` runs.
    Positive and negative data go through each layer as one batch (positive first), and every layer's output
    is normalised in place after its backward to become the next layer's input, so the step holds one layer's
    input, output and graph at a time.

    Args:
        layers: the FF layers, in order.
        x_pos: the input with the true label embedded (:func:`embed_label`).
        x_neg: the same input with a wrong label embedded.
        objective: goodness, threshold, peer normalisation (default :class:`FFObjective()`).
        layer_weights: one factor per layer multiplying its loss before the backward (default all 1).
        peer_means: one running-mean buffer per layer (updated in place) when peer normalisation is on.
        scale: applied to every loss before its backward.
        observer: receives the events of every layer.
        on_layer_done: called with ``(index, result)`` after each layer's backward (its gradient is final).

    Returns:
        The per-layer losses (detached, unweighted, unscaled).

    Raises:
        ValueError: if ``layer_weights`` or ``peer_means`` do not match the layers.
    """
    stacked = [torch.cat([x_pos.detach(), x_neg.detach()])]
    return _train_layers(
        layers, stacked, x_pos.shape[0], objective, layer_weights, peer_means, scale, observer, on_layer_done
    )


def ff_backward_labels(
    layers: Sequence[nn.Module],
    x: Tensor,
    labels: Tensor,
    negative_labels: Tensor,
    num_classes: int,
    objective: FFObjective | None = None,
    *,
    layer_weights: Sequence[float] | None = None,
    peer_means: Sequence[Tensor] | None = None,
    scale: LossScale | None = None,
    observer: EngineObserver | None = None,
    on_layer_done: Callable[[int, FFLayerResult], None] | None = None,
) -> list[Tensor]:
    """:func:`ff_backward` with the positive and negative data made here from ``x`` and the labels.

    The same as ``ff_backward(layers, embed_label(x, labels, ...), embed_label(x, negative_labels, ...))``, but
    the labelled inputs exist only inside this call (one stacked buffer, released after the first layer).

    Args:
        layers: the FF layers, in order.
        x: the network's input (the label positions are overwritten in copies).
        labels: the true labels ``(N,)``.
        negative_labels: a wrong label per sample ``(N,)``.
        num_classes: ``C``.
        objective: goodness, threshold, peer normalisation and the label value.
        layer_weights: see :func:`ff_backward`.
        peer_means: see :func:`ff_backward`.
        scale: see :func:`ff_backward`.
        observer: see :func:`ff_backward`.
        on_layer_done: see :func:`ff_backward`.
    """
    objective = objective or FFObjective()
    stacked = [embed_label(torch.cat([x, x]), torch.cat([labels, negative_labels]), num_classes, objective.label_value)]
    return _train_layers(
        layers, stacked, x.shape[0], objective, layer_weights, peer_means, scale, observer, on_layer_done
    )


def _train_layers(
    layers: Sequence[nn.Module],
    holder: list[Tensor],
    num_positive: int,
    objective: FFObjective | None,
    layer_weights: Sequence[float] | None,
    peer_means: Sequence[Tensor] | None,
    scale: LossScale | None,
    observer: EngineObserver | None,
    on_layer_done: Callable[[int, FFLayerResult], None] | None,
) -> list[Tensor]:
    """The layer loop of :func:`ff_backward`; ``holder`` hands over the stacked input (emptied here, so that
    nothing outside keeps it alive once the first layer is done)."""
    objective = objective or FFObjective()
    layers = list(layers)
    if layer_weights is not None and len(layer_weights) != len(layers):
        raise ValueError(
            f"ff_backward: {len(layer_weights)} layer weights for {len(layers)} layers. HINT: give one weight per layer."
        )
    if objective.peer_weight > 0 and (peer_means is None or len(peer_means) != len(layers)):
        raise ValueError(
            "ff_backward: peer normalisation needs one running-mean buffer per layer (peer_means). "
            "HINT: pass peer_means=[torch.zeros(units) for each layer], or peer_weight=0."
        )
    stacked = holder.pop()
    losses: list[Tensor] = []
    for index, layer in enumerate(layers):
        result = ff_layer_step(
            layer,
            stacked,
            num_positive,
            objective,
            weight=1.0 if layer_weights is None else float(layer_weights[index]),
            peer_mean=None if peer_means is None else peer_means[index],
            scale=scale,
            observer=observer,
            index=index,
        )
        losses.append(result.loss)
        if on_layer_done is not None:
            on_layer_done(index, result)
        stacked = result.output
        del result
    return losses


def scored_layers(num_layers: int, which: ScoreLayers = "all_but_first") -> list[int]:
    """The layers whose goodness is accumulated for prediction (``"all_but_first"`` keeps the one layer of a one-layer net)."""
    if which not in ("all", "all_but_first"):
        raise ValueError(f"score_layers must be 'all' or 'all_but_first', got {which!r}. HINT: use 'all_but_first'.")
    first = 1 if which == "all_but_first" and num_layers > 1 else 0
    return list(range(first, num_layers))


@torch.no_grad()
def goodness_scores(
    layers: Sequence[nn.Module],
    x: Tensor,
    num_classes: int,
    objective: FFObjective | None = None,
    score_layers: ScoreLayers = "all_but_first",
) -> Tensor:
    """The goodness of every label, accumulated over the scored layers: ``(N, C)``; its arg-max is the prediction.

    Runs the layers once per label ``c`` on ``x`` with ``c`` embedded (``C`` passes), every layer on the
    length-normalised output of the previous one, and adds up ``G`` of the layers :func:`scored_layers` picks.

    Args:
        layers: the FF layers.
        x: the network's input without label (the label positions are overwritten).
        num_classes: ``C``.
        objective: the goodness and label value used in training.
        score_layers: ``"all_but_first"`` (Hinton's choice) or ``"all"``.
    """
    objective = objective or FFObjective()
    layers = list(layers)
    keep = set(scored_layers(len(layers), score_layers))
    scores = torch.zeros(x.shape[0], num_classes, device=x.device, dtype=torch.float32)
    for label in range(num_classes):
        labels = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
        h = embed_label(x, labels, num_classes, objective.label_value)
        for index, layer in enumerate(layers):
            h = layer(length_normalize(h, objective.eps))
            if index in keep:
                scores[:, label] += objective.of(h).float()
    return scores


def hardest_negative_labels(
    layers: Sequence[nn.Module],
    x: Tensor,
    labels: Tensor,
    num_classes: int,
    objective: FFObjective | None = None,
    score_layers: ScoreLayers = "all_but_first",
) -> Tensor:
    """For every sample the wrong label with the largest accumulated goodness (the one the network most confuses)."""
    scores = goodness_scores(layers, x, num_classes, objective, score_layers)
    scores.scatter_(1, labels.view(-1, 1).long(), float("-inf"))
    return scores.argmax(dim=1)
