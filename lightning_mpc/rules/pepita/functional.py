"""PEPITA in pure PyTorch: two forward passes, no backward (Dellaferrera & Kreiman, arXiv 2201.11665).

For a batch ``x`` (``n`` samples) with targets ``y``:

1. The first pass runs the network on ``x``; every layer ``l`` (see :mod:`~lightning_mpc.rules.pepita.layers`)
   records its input ``a_l`` and its activity ``h_l``; the output error is ``e = softmax(output) - onehot(y)``
   (``output - y`` for float targets of the output's shape).
2. The modulated pass runs the network on ``x_err = x + F e`` (``F`` maps the ``C`` outputs to the input shape,
   see :mod:`~lightning_mpc.rules.pepita.feedback`) with the same dropout masks (the random state of the first
   pass is replayed) and records ``a_l_err`` and ``h_l_err``.
3. Updates, written into ``.grad`` (added to what is there) so that the user's optimizer applies them:

   * every layer but the last: ``(h_l - h_l_err)^T a_l_err / n`` (``a_1_err = x_err``);
   * the last layer: ``e'^T a_L_err / n``, with ``e' = softmax(output_err) - onehot(y)`` (``output_error=
     "modulated"``, the authors' tutorial) or ``e' = e`` (``"first"``, the authors' later code);
   * a bias is a weight on a constant input: its update is the same difference summed over the batch, ``/ n``;
   * a convolution's update is the unfolded outer product, ``torch.nn.grad.conv2d_weight(a_err, W.shape,
     h - h_err)``, summed over positions (``conv_scale="mean"`` or ``"sqrt"`` divide by the number of output
     positions or its square root, as the authors' convolutional code does).

   With ``.grad = update`` as above, ``torch.optim.SGD(momentum=0.9)`` is the authors' hand-written momentum
   ``v <- 0.9 v + lr * delta / n; W <- W + v`` with ``delta = -n * .grad``.

Variants (Srinivasan et al., arXiv 2302.05440):

* ``variant="hebbian"`` (PEPITA-Hebbian): the two passes contribute separately, a Hebbian term of the first and
  an anti-Hebbian term of the modulated pass: ``(h_l^T a_l - h_l_err^T a_l_err) / n``, and for the last layer
  ``(p^T a_L - t^T a_L_err) / n`` with ``p = softmax(output)``, ``t = onehot(y)``.
* :func:`pepita_time_local`: the same two terms, each applied by an optimizer step as soon as its pass ends, so
  that the modulated pass already runs with the updated weights: two optimizer steps per batch, which a
  Lightning strategy (one step per batch) cannot offer.
* Weight mirroring: ``F`` factorised per layer, see :class:`~lightning_mpc.rules.pepita.FeedbackProjection`.

To first order in ``F``, the first layer's update is direct feedback alignment with feedback ``-W_1 F``:
``h_1 - h_1_err = -sigma'(W_1 x) * (W_1 F e) + O(|F|^2)`` (the adaptive-feedback-alignment view of 2302.05440).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.core.isolation import RandomState
from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.core.partition import partition
from lightning_mpc.rules.pepita.layers import ActivityTaps, PepitaLayer, find_layers

__all__ = [
    "ConvScale",
    "FirstPass",
    "OutputError",
    "PepitaResult",
    "Variant",
    "layer_update",
    "modulated_input",
    "output_terms",
    "pepita_backward",
    "pepita_time_local",
    "record_first_pass",
    "run_modulated_pass",
]

OutputError = Literal["modulated", "first"]
"""Which error trains the last layer: the modulated pass's (``"modulated"``) or the first pass's (``"first"``)."""
Variant = Literal["pepita", "hebbian"]
"""``"pepita"``: the difference of the two passes; ``"hebbian"``: a Hebbian minus an anti-Hebbian term."""
ConvScale = Literal["sum", "mean", "sqrt"]
"""How a convolution's update is normalised over its output positions: not at all, by their number, by its root."""
ForwardContext = Callable[[], contextlib.AbstractContextManager[Any]]

OUTPUT_ERRORS: tuple[str, ...] = ("modulated", "first")
VARIANTS: tuple[str, ...] = ("pepita", "hebbian")
CONV_SCALES: tuple[str, ...] = ("sum", "mean", "sqrt")


# --------------------------------------------------------------------------- pieces of the rule
def output_terms(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(p, t)`` with output error ``e = p - t``.

    Integer class targets of shape ``(n,)`` and an output ``(n, C)``: ``p = softmax(output)``, ``t = onehot``.
    Float targets shaped like the output: ``p = output``, ``t = target`` (the error of a squared loss).

    Raises:
        ValueError: for any other pair of shapes or dtypes.
    """
    if not target.is_floating_point() and output.dim() == 2 and target.shape == output.shape[:1]:
        prediction = torch.softmax(output, dim=1, dtype=torch.promote_types(output.dtype, torch.float32)).to(
            output.dtype
        )
        return prediction, F.one_hot(target.long(), output.shape[1]).to(output.dtype)
    if target.is_floating_point() and target.shape == output.shape:
        return output, target.to(output.dtype)
    raise ValueError(
        f"PEPITA's output error needs integer class targets of shape (n,) for an output (n, C), or float targets "
        f"shaped like the output; got an output {tuple(output.shape)} and a {target.dtype} target "
        f"{tuple(target.shape)}. HINT: return class logits from the network and put the labels in batch[1]."
    )


def modulated_input(x: Tensor, feedback: Tensor, error: Tensor) -> Tensor:
    """``x + F e``: the input of the modulated pass (``F e`` reshaped like ``x``).

    Args:
        x: the first pass's input, ``n`` samples.
        feedback: ``F``, shape ``(x[0].numel(), C)``.
        error: ``e``, shape ``(n, C)``.

    Raises:
        ValueError: if the shapes do not fit.
    """
    size = x[0].numel() if x.dim() > 0 and x.shape[0] > 0 else 0
    if feedback.dim() != 2 or feedback.shape[0] != size or feedback.shape[1] != error.shape[-1]:
        raise ValueError(
            f"The feedback matrix F has shape {tuple(feedback.shape)}, but the input has {size} elements per sample "
            f"and the error {error.shape[-1]} outputs: F must be ({size}, {error.shape[-1]}). HINT: build F for this "
            "network's input and output sizes."
        )
    projected = (error.reshape(error.shape[0], -1).to(feedback.dtype) @ feedback.T).reshape(x.shape)
    if projected.dtype == x.dtype:
        return projected.add_(x)  # x + F e in the product's own buffer
    return x + projected.to(x.dtype)


def _conv_input(layer: nn.Conv2d, inputs: Tensor) -> tuple[Tensor, Any]:
    """The convolution's input padded as its forward pads it, and the padding left for ``conv2d_weight``."""
    if layer.padding_mode != "zeros":
        return F.pad(inputs, layer._reversed_padding_repeated_twice, mode=layer.padding_mode), 0
    if isinstance(layer.padding, str):
        return F.pad(inputs, layer._reversed_padding_repeated_twice), 0
    return inputs, layer.padding


def layer_update(
    layer: nn.Linear | nn.Conv2d,
    activity: Tensor,
    inputs: Tensor,
    conv_scale: ConvScale = "sum",
    factor: float = 1.0,
) -> list[Tensor]:
    """The outer product ``activity^T inputs`` summed over the batch, for the layer's weight and bias.

    Args:
        layer: the layer (its trainable parameters decide what is returned).
        activity: a tensor shaped like the layer's output (a difference of activities, or an error).
        inputs: the layer's input.
        conv_scale: for a convolution, how the sum over output positions is normalised.
        factor: multiplies the result (applied without allocating a second weight-sized tensor).

    Returns:
        One tensor per trainable parameter of ``layer``, weight first: ``activity^T inputs`` for the weight
        (``conv2d_weight`` for a convolution), ``activity`` summed over the batch (and positions) for the bias.
    """
    weight = layer.weight
    with_weight = weight.requires_grad
    with_bias = layer.bias is not None and layer.bias.requires_grad
    delta = activity.detach().to(weight.dtype)
    inputs = inputs.detach().to(weight.dtype)
    updates: list[Tensor] = []
    if isinstance(layer, nn.Conv2d):
        if with_weight:
            padded, padding = _conv_input(layer, inputs)
            updates.append(
                torch.nn.grad.conv2d_weight(
                    padded, weight.shape, delta, layer.stride, padding, layer.dilation, layer.groups
                )
            )
        if with_bias:
            updates.append(delta.sum(dim=(0, 2, 3)))
        positions = delta.shape[-2] * delta.shape[-1]
        divisor = {"sum": 1.0, "mean": float(positions), "sqrt": math.sqrt(positions)}[conv_scale]
        if factor / divisor != 1.0:
            for tensor in updates:
                tensor.mul_(factor / divisor)
    else:
        delta2 = delta.reshape(-1, delta.shape[-1])
        if with_weight:
            inputs2 = inputs.reshape(-1, inputs.shape[-1])
            updates.append(torch.addmm(weight.new_zeros(()), delta2.T, inputs2, beta=0, alpha=factor))
        if with_bias:
            updates.append(delta2.sum(dim=0).mul_(factor))
    return updates


def _write(layer: PepitaLayer, updates: Sequence[Tensor], scale: Callable[[Tensor], Tensor] | None) -> None:
    """Add ``updates`` to the ``.grad`` of the layer's trainable parameters (after ``scale``).

    An empty ``.grad`` takes the update tensor itself (no copy): pass tensors nothing else holds.
    """
    for param, update in zip(layer.parameters, updates):
        value = update if scale is None else scale(update)
        if param.grad is None:
            param.grad = value if value.dtype == param.dtype else value.to(param.dtype)
        else:
            param.grad.add_(value.to(param.grad.dtype))


def _apply(
    layer: PepitaLayer,
    activity: Tensor,
    inputs: Tensor,
    n: int,
    conv_scale: ConvScale,
    scale: Callable[[Tensor], Tensor] | None,
    keep: bool,
) -> list[Tensor]:
    """``layer_update(...) / n`` added to the layer's ``.grad``; returns copies when ``keep`` (else ``[]``)."""
    update = layer_update(layer.module, activity, inputs, conv_scale, factor=1.0 / n)
    kept = [tensor.clone() for tensor in update] if keep else []
    _write(layer, update, scale)
    return kept


def _hebbian(before: Tensor, inputs_before: Tensor, after: Tensor, inputs_after: Tensor) -> tuple[Tensor, Tensor]:
    """``(activity, inputs)`` whose outer product is ``before^T inputs_before - after^T inputs_after`` (one product)."""
    return torch.cat([before, -after.to(before.dtype)]), torch.cat(
        [inputs_before, inputs_after.to(inputs_before.dtype)]
    )


def _rms(value: Tensor) -> Tensor:
    """Root mean square of ``value`` as a 0-d tensor (no device synchronisation)."""
    if not value.numel():
        return value.new_zeros(())
    dtype = torch.promote_types(value.dtype, torch.float32)
    return torch.linalg.vector_norm(value.detach(), dtype=dtype) / math.sqrt(value.numel())


def _floats(values: Sequence[Tensor | None]) -> list[float]:
    """Python numbers of 0-d tensors, one synchronisation for all (``nan`` for ``None``)."""
    present = [v for v in values if v is not None]
    numbers = iter(torch.stack([v.to(present[0].device) for v in present]).tolist() if present else [])
    return [float("nan") if v is None else next(numbers) for v in values]


def _holds_in_place(blocks: Sequence[nn.Module]) -> bool:
    return any(getattr(module, "inplace", False) for block in blocks for module in block.modules())


def _run(
    blocks: Sequence[nn.Module], x: Tensor, observer: EngineObserver | None = None, modulated: bool = False
) -> Tensor:
    """The blocks in order; the observer hears each block (``backward_*`` events for the modulated pass)."""
    out = x
    for index, block in enumerate(blocks):
        if observer is not None:
            (observer.backward_started if modulated else observer.block_started)(index)
        out = block(out)
        if observer is not None:
            if modulated:
                observer.backward_finished(index)
            else:
                observer.block_finished(index, out)
    return out


# --------------------------------------------------------------------------- the two passes
@dataclass
class FirstPass:
    """What PEPITA keeps from the first forward pass until the modulated pass has used it.

    Attributes:
        x: the network's input (block 0's input).
        activities: every layer's activity ``h_l`` (entries are released once used).
        output: the network's output.
        random_state: the random state the pass started from (replayed so that dropout masks match).
        inputs: every layer's input ``a_l`` (kept only when asked: the Hebbian variants need them).
    """

    x: Tensor
    activities: list[Tensor | None]
    output: Tensor
    random_state: RandomState
    inputs: list[Tensor | None] = field(default_factory=list)

    def held_bytes(self) -> int:
        """Bytes of the distinct storages this record holds (what PEPITA keeps between its passes)."""
        seen: dict[tuple[str, int], int] = {}
        for tensor in [self.x, self.output, *self.activities, *self.inputs]:
            if tensor is not None:
                storage = tensor.untyped_storage()
                seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
        return sum(seen.values())


class FirstPassRecorder:
    """Collects a first pass from the layers' taps: ``sink`` is an :data:`~lightning_mpc.rules.pepita.layers.LayerSink`.

    Args:
        num_layers: how many layers report.
        keep_inputs: keep every layer's input too (Hebbian variants).
        copy: store copies (when in-place modules could overwrite the recorded tensors later).
    """

    def __init__(self, num_layers: int, keep_inputs: bool = False, copy: bool = False) -> None:
        self.activities: list[Tensor | None] = [None] * num_layers
        self.inputs: list[Tensor | None] = [None] * num_layers
        self.keep_inputs = keep_inputs
        self.copy = copy

    def _keep(self, tensor: Tensor) -> Tensor:
        tensor = tensor.detach()
        return tensor.clone() if self.copy else tensor

    def sink(self, number: int, inputs: Tensor, activity: Tensor) -> None:
        """Record layer ``number``'s input (if kept) and activity."""
        self.activities[number] = self._keep(activity)
        if self.keep_inputs:
            self.inputs[number] = self._keep(inputs)

    def complete(self) -> bool:
        """Whether every layer reported."""
        return all(a is not None for a in self.activities)

    def result(self, x: Tensor, output: Tensor, random_state: RandomState) -> FirstPass:
        """The recorded pass (raises if a layer did not report)."""
        missing = [i for i, a in enumerate(self.activities) if a is None]
        if missing:
            raise RuntimeError(
                f"PEPITA's first pass recorded no activity for layer(s) {missing}. HINT: the forward must apply every "
                "block, and every layer of a block in the order of the block's modules."
            )
        return FirstPass(
            x=x.detach(),
            activities=list(self.activities),
            output=output.detach(),
            random_state=random_state,
            inputs=list(self.inputs) if self.keep_inputs else [],
        )


def record_first_pass(
    blocks: Sequence[nn.Module],
    taps: ActivityTaps,
    x: Tensor,
    *,
    keep_inputs: bool = False,
    observer: EngineObserver | None = None,
) -> FirstPass:
    """Run the blocks on ``x`` without gradients and record what the modulated pass needs."""
    recorder = FirstPassRecorder(len(taps.layers), keep_inputs, copy=_holds_in_place(blocks))
    state = RandomState.capture(x.device)
    with torch.no_grad(), taps.listening(recorder.sink):
        output = _run(blocks, x, observer)
    return recorder.result(x, output, state)


@dataclass
class PepitaResult:
    """What one PEPITA step computed (all detached).

    Attributes:
        output: the first pass's output.
        error: ``e``, the first pass's output error.
        modulated_output: the modulated pass's output.
        updates: per layer, copies of the tensors added to its parameters' ``.grad`` (before ``scale``), weight
            first; empty lists when the updates were not kept (``keep_updates=False``).
        modulation: per layer, the root mean square of ``h_l - h_l_err`` (the last layer: of the logits).
    """

    output: Tensor
    error: Tensor
    modulated_output: Tensor
    updates: list[list[Tensor]]
    modulation: list[float]


def run_modulated_pass(
    blocks: Sequence[nn.Module],
    taps: ActivityTaps,
    first: FirstPass,
    target: Tensor,
    feedback: Tensor,
    *,
    output_error: OutputError = "modulated",
    variant: Variant = "pepita",
    conv_scale: ConvScale = "sum",
    scale: Callable[[Tensor], Tensor] | None = None,
    forward_context: ForwardContext | None = None,
    observer: EngineObserver | None = None,
    keep_updates: bool = True,
) -> PepitaResult:
    """The modulated pass and every layer's update, added to ``.grad``; consumes ``first``'s activities.

    Each hidden layer's update is computed as soon as the modulated pass has produced its activity, and the
    first pass's activity is released then, so at most one layer's modulated activations are alive beyond
    the first pass's record.

    Args:
        blocks: the blocks, in forward order (the modulated pass applies them one after the other).
        taps: hooks on the layers of ``blocks``.
        first: the first pass (:func:`record_first_pass`, or recorded inside the user's forward).
        target: the batch's targets (see :func:`output_terms`).
        feedback: ``F``, shape ``(first.x[0].numel(), C)``.
        output_error: the error that trains the last layer (see the module documentation).
        variant: ``"pepita"`` or ``"hebbian"`` (needs ``first.inputs``).
        conv_scale: the normalisation of convolution updates over output positions.
        scale: applied to every update before it is added to ``.grad`` (accumulation, AMP loss scale).
        forward_context: a context for the modulated pass (the precision plugin's autocast).
        observer: receives ``backward_started/finished(block)`` around each block of the modulated pass.
        keep_updates: return a copy of every update in :attr:`PepitaResult.updates` (else the lists are empty
            and the updates go into ``.grad`` without copies).
    """
    if output_error not in OUTPUT_ERRORS:
        raise ValueError(f"output_error must be one of {OUTPUT_ERRORS}, got {output_error!r}.")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    if variant == "hebbian" and len(first.inputs) != len(taps.layers):
        raise ValueError("The Hebbian variant needs the first pass's layer inputs. HINT: record with keep_inputs=True.")
    layers = taps.layers
    last = len(layers) - 1
    n = first.x.shape[0]
    prediction, onehot = output_terms(first.output, target)
    error = prediction - onehot
    x_err = modulated_input(first.x, feedback, error)
    updates: list[list[Tensor]] = [[] for _ in layers]
    modulation: list[Tensor | None] = [None] * len(layers)
    last_seen: list[Tensor] = []

    def sink(number: int, inputs: Tensor, activity: Tensor) -> None:
        before = first.activities[number]
        assert before is not None, f"layer {number} reported twice in the modulated pass"
        difference = before - activity
        modulation[number] = _rms(difference)
        if number == last:
            last_seen[:] = [inputs.detach(), activity.detach()]
            return
        if variant == "pepita":
            delta, seen = difference, inputs
        else:
            delta, seen = _hebbian(before, first.inputs[number], activity, inputs)  # type: ignore[arg-type]
        updates[number] = _apply(layers[number], delta, seen, n, conv_scale, scale, keep_updates)
        first.activities[number] = None

    context = forward_context() if forward_context is not None else contextlib.nullcontext()
    with first.random_state.replay(), torch.no_grad(), context, taps.listening(sink):
        modulated_output = _run(blocks, x_err, observer, modulated=True)
    if len(last_seen) != 2:
        raise RuntimeError(
            "PEPITA's modulated pass did not reach the last layer. HINT: every block must pass its output to the next."
        )
    last_input, last_activity = last_seen
    if variant == "pepita":
        if output_error == "first":
            delta = error
        else:
            delta = output_terms(modulated_output.detach(), target)[0] - onehot
        delta, seen = delta.reshape(last_activity.shape), last_input
    else:
        delta, seen = _hebbian(
            prediction.reshape(last_activity.shape),
            first.inputs[last],  # type: ignore[arg-type]
            onehot.reshape(last_activity.shape),
            last_input,
        )
    updates[last] = _apply(layers[last], delta, seen, n, conv_scale, scale, keep_updates)
    first.activities[last] = None
    return PepitaResult(
        output=first.output,
        error=error.detach(),
        modulated_output=modulated_output.detach(),
        updates=updates,
        modulation=_floats(modulation),
    )


# --------------------------------------------------------------------------- whole steps
def _as_blocks(blocks: Sequence[nn.Module] | nn.Module) -> list[nn.Module]:
    return partition(blocks) if isinstance(blocks, nn.Module) else list(blocks)


def pepita_backward(
    blocks: Sequence[nn.Module] | nn.Module,
    x: Tensor,
    target: Tensor,
    feedback: Tensor,
    *,
    output_error: OutputError = "modulated",
    variant: Variant = "pepita",
    conv_scale: ConvScale = "sum",
    scale: Callable[[Tensor], Tensor] | None = None,
    keep_updates: bool = True,
) -> PepitaResult:
    """One PEPITA step: both passes, and every layer's update added to ``.grad`` (then step your optimizer).

    No autograd graph is built; the network runs twice without gradients.

    Args:
        blocks: the network's blocks in forward order, or an ``nn.Sequential`` / module that
            :func:`lightning_mpc.partition` cuts.
        x: the input batch.
        target: class indices ``(n,)`` for an output ``(n, C)``, or float targets shaped like the output.
        feedback: ``F``, shape ``(x[0].numel(), C)`` (e.g. :func:`~lightning_mpc.rules.pepita.random_feedback`,
            or ``FeedbackProjection.weight()``).
        output_error: the error that trains the last layer: ``"modulated"`` or ``"first"``.
        variant: ``"pepita"`` or ``"hebbian"``.
        conv_scale: the normalisation of convolution updates over output positions.
        scale: applied to every update before it is added to ``.grad``.
        keep_updates: return a copy of every update in the result (``False`` saves the copies).

    Returns:
        The step's outputs, error and updates (:class:`PepitaResult`).

    Raises:
        ValueError, TypeError: for a network PEPITA cannot train (see :func:`~lightning_mpc.rules.pepita.find_layers`)
            or shapes that do not fit, with a ``HINT``.

    Example::

        F = random_feedback(784, 10, generator=torch.Generator().manual_seed(0))
        pepita_backward(net, x.flatten(1), y, F)
        optimizer.step(); optimizer.zero_grad()
    """
    blocks = _as_blocks(blocks)
    taps = ActivityTaps(find_layers(blocks))
    try:
        first = record_first_pass(blocks, taps, x, keep_inputs=variant == "hebbian")
        return run_modulated_pass(
            blocks,
            taps,
            first,
            target,
            feedback,
            output_error=output_error,
            variant=variant,
            conv_scale=conv_scale,
            scale=scale,
            keep_updates=keep_updates,
        )
    finally:
        taps.remove()


def pepita_time_local(
    blocks: Sequence[nn.Module] | nn.Module,
    x: Tensor,
    target: Tensor,
    feedback: Tensor,
    step: Callable[[], None],
    *,
    conv_scale: ConvScale = "sum",
) -> PepitaResult:
    """Time-local PEPITA (2302.05440): each pass's term is applied as soon as the pass ends; two optimizer steps.

    After the first pass the Hebbian term ``h_l^T a_l / n`` (last layer: ``p^T a_L / n``) is added to ``.grad``
    and ``step()`` is called; the modulated pass then runs with the updated weights (same dropout masks, input
    ``x + F e`` with the first pass's error), the anti-Hebbian term ``-h_l_err^T a_l_err / n`` (last layer:
    ``-t^T a_L_err / n``) is added and ``step()`` is called again. ``step`` must apply and clear the gradients,
    e.g. ``lambda: (optimizer.step(), optimizer.zero_grad())``. A Lightning strategy steps the optimizer once
    per batch, so ``strategy="pepita"`` does not offer this variant; use this function in your own loop.

    Returns:
        The step's outputs and error; ``updates`` holds, per layer, the Hebbian term plus the anti-Hebbian term.
    """
    blocks = _as_blocks(blocks)
    layers = find_layers(blocks)
    taps = ActivityTaps(layers)
    try:
        first = record_first_pass(blocks, taps, x, keep_inputs=True)
        n = x.shape[0]
        prediction, onehot = output_terms(first.output, target)
        last = len(layers) - 1
        hebbian: list[list[Tensor]] = []
        for number, layer in enumerate(layers):
            activity, inputs = first.activities[number], first.inputs[number]
            assert activity is not None and inputs is not None
            if number == last:
                activity = prediction.reshape(activity.shape)
            hebbian.append(_apply(layer, activity, inputs, n, conv_scale, None, keep=True))
        step()
        error = prediction - onehot
        x_err = modulated_input(first.x, feedback, error)
        second = FirstPassRecorder(len(layers), keep_inputs=True, copy=_holds_in_place(blocks))
        with first.random_state.replay(), torch.no_grad(), taps.listening(second.sink):
            modulated_output = _run(blocks, x_err)
        modulation: list[Tensor | None] = []
        updates: list[list[Tensor]] = []
        for number, layer in enumerate(layers):
            activity, inputs = second.activities[number], second.inputs[number]
            before = first.activities[number]
            assert activity is not None and inputs is not None and before is not None
            modulation.append(_rms(before - activity))
            if number == last:
                activity = onehot.reshape(activity.shape)
            anti = _apply(layer, -activity, inputs, n, conv_scale, None, keep=True)
            updates.append([a + b for a, b in zip(hebbian[number], anti)])
        step()
        return PepitaResult(
            output=first.output,
            error=error.detach(),
            modulated_output=modulated_output.detach(),
            updates=updates,
            modulation=_floats(modulation),
        )
    finally:
        taps.remove()
