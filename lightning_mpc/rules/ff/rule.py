"""Forward-Forward (Hinton 2022) as a credit-assignment rule: ``Trainer(strategy="ff")``.

Every block but the last is an FF layer; the last block is the readout. At the start of every training step
the rule runs the FF layers on the batch twice over (positive data: the true label embedded in the input;
negative data: a wrong label), one layer at a time, and writes each layer's FF gradient into its ``.grad``
(the pure-PyTorch form is :func:`~lightning_mpc.rules.ff.functional.ff_backward`). Then the user's
``training_step`` runs unchanged: its forward sees the input with the *neutral* label embedded, and the input
of every block (the readout's included) length-normalised and detached, so the loss it returns trains only
the readout, on the FF layers' features. Validation, test and predict output the accumulated goodness of
every label (``prediction="goodness"``: ``C`` passes, the arg-max is the predicted label) or the readout's
output on the neutral-label input (``prediction="readout"``: one pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_mpc.core.hooks import BlockListener
from lightning_mpc.core.partition import describe
from lightning_mpc.rules.base import CreditRule, RuleSetup, RuleStep
from lightning_mpc.rules.ff.functional import (
    FFLayerResult,
    FFObjective,
    Goodness,
    ScoreLayers,
    embed_label,
    ff_backward_labels,
    goodness_scores,
    hardest_negative_labels,
    length_normalize,
    random_negative_labels,
    scored_layers,
)
from lightning_mpc.rules.generator import SeededGenerator
from lightning_mpc.rules.labels import class_count, class_labels

__all__ = ["PEER_ATTRIBUTE", "FFPeerState", "FFRule"]

PEER_ATTRIBUTE = "ff_peer"
"""The attribute of the LightningModule holding peer normalisation's running means (when it is on)."""

Negatives = Literal["random", "hardest"]
Prediction = Literal["goodness", "readout"]


class FFPeerState(nn.Module):
    """The running mean activity of every unit of every FF layer (buffers ``mean_00``, ``mean_01``, ...).

    Args:
        units: the number of units (values per sample of the output) of every FF layer.
    """

    def __init__(self, units: list[int]) -> None:
        super().__init__()
        self.units = list(units)
        for index, count in enumerate(units):
            self.register_buffer(f"mean_{index:02d}", torch.zeros(count))

    def means(self) -> list[Tensor]:
        """The buffers, in layer order."""
        return [getattr(self, f"mean_{index:02d}") for index in range(len(self.units))]


class _Listener:
    """Feeds the user's forward the neutral-label input and length-normalised, detached block inputs.

    In training the FF layers run without autograd inside the user's forward (their gradients came from the
    FF passes; the readout's input is detached anyway), so no graph is built for them. During evaluation with
    ``prediction="goodness"`` the readout's output is replaced by the goodness of every label.
    """

    def __init__(self, rule: FFRule, training: bool) -> None:
        self.rule = rule
        self.training = training
        self.seen = 0
        self.scores: Tensor | None = None
        self._scoring = False  # the label passes run the hooked blocks again: let them through untouched
        self._grad_mode: bool | None = None  # autograd's mode before an FF layer of the user's forward

    def restore_grad_mode(self) -> None:
        """Switch autograd back on if an FF layer's forward switched it off (also after an exception)."""
        if self._grad_mode is not None:
            torch.set_grad_enabled(self._grad_mode)
            self._grad_mode = None

    def block_started(self, index: int) -> None:
        if self._scoring:
            return
        self.seen = max(self.seen, index + 1)
        observer = self.rule.observer
        if self.training and observer is not None and index == self.rule.num_blocks - 1:
            observer.block_started(index)

    def block_input(self, index: int, x: Tensor) -> Tensor:
        rule = self.rule
        if self._scoring:
            return x
        if index == 0:
            if not self.training and rule.prediction == "goodness":
                self._scoring = True
                try:
                    self.scores = goodness_scores(
                        rule.ff_layers, x, rule.num_classes, rule.objective, rule.score_layers
                    )
                finally:
                    self._scoring = False
            x = embed_label(x.detach(), None, rule.num_classes, rule.objective.label_value)
        x = length_normalize(x.detach(), rule.objective.eps)
        if self.training and index < rule.num_blocks - 1:
            self._grad_mode = torch.is_grad_enabled()
            torch.set_grad_enabled(False)
        return x

    def block_output(self, index: int, output: Tensor) -> Tensor:
        if self._scoring:
            return output
        if index != self.rule.num_blocks - 1:
            self.restore_grad_mode()
            return output
        if self.training and self.rule.observer is not None:
            self.rule.observer.block_finished(index, output)
        if self.scores is not None:
            scores, self.scores = self.scores, None
            return scores.to(output.dtype) if isinstance(output, Tensor) and output.is_floating_point() else scores
        return output


class FFRule(CreditRule):
    """Forward-Forward: every block but the last learns from its own goodness, no gradient crosses a block.

    Args:
        goodness: ``"sum"`` (``G = sum_j h_j^2``, Hinton's form) or ``"mean"`` (``G = mean_j h_j^2``).
        threshold: ``theta``; default: the layer's number of units for ``"sum"``, 1 for ``"mean"``.
        sharpness: ``alpha`` in ``p(positive) = sigmoid(alpha * (G - theta))`` (Hinton's form: 1).
        negatives: ``"random"`` (a wrong label drawn uniformly) or ``"hardest"`` (the wrong label with the
            largest goodness; ``C`` extra forward passes per step).
        prediction: ``"goodness"`` (the label with the largest accumulated goodness, ``C`` passes) or
            ``"readout"`` (the last block on the neutral-label input, one pass).
        score_layers: the layers whose goodness is accumulated for prediction and hardest negatives:
            ``"all_but_first"`` (Hinton's choice) or ``"all"``.
        peer_weight: weight of peer normalisation (0 switches it off; loeweX/Forward-Forward uses 0.03).
        peer_momentum: momentum of peer normalisation's running mean activity.
        label_value: the one-hot entry written into the input (the neutral label is ``label_value / C``).
        num_classes: ``C``; default: the last block's output size.
        eps: added to the root mean square when length-normalising.
        seed: seed of the rule's generator for negative labels (saved in checkpoints).
    """

    name = "ff"
    metric_prefix = "ff"

    def __init__(
        self,
        goodness: Goodness = "sum",
        threshold: float | None = None,
        sharpness: float = 1.0,
        negatives: Negatives = "random",
        prediction: Prediction = "goodness",
        score_layers: ScoreLayers = "all_but_first",
        peer_weight: float = 0.0,
        peer_momentum: float = 0.9,
        label_value: float = 1.0,
        num_classes: int | None = None,
        eps: float = 1e-8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.objective = FFObjective(
            goodness=goodness,
            threshold=threshold,
            eps=eps,
            sharpness=sharpness,
            peer_weight=peer_weight,
            peer_momentum=peer_momentum,
            label_value=label_value,
        )
        if negatives not in ("random", "hardest"):
            raise ValueError(f"negatives must be 'random' or 'hardest', got {negatives!r}. HINT: use negatives='random'.")
        if prediction not in ("goodness", "readout"):
            raise ValueError(
                f"prediction must be 'goodness' or 'readout', got {prediction!r}. HINT: 'readout' is the one-pass choice."
            )
        scored_layers(2, score_layers)  # validates
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}. HINT: leave it None to read it from the model.")
        self.negatives: Negatives = negatives
        self.prediction: Prediction = prediction
        self.score_layers: ScoreLayers = score_layers
        self.requested_classes = num_classes
        self.num_classes = num_classes or 0
        self.generator = SeededGenerator(seed)
        self._blocks: list[nn.Module] = []
        self._peer: FFPeerState | None = None
        self._listener: _Listener | None = None
        # What a step changes besides .grad (the negative-label draws, peer normalisation's running means),
        # as it was when the step began: abort() puts it back, so a skipped batch leaves no trace.
        self._before_step: tuple[Tensor | None, list[Tensor]] | None = None

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        info = {"rule": self.name, **self.objective.to_dict(), "negatives": self.negatives, "prediction": self.prediction}
        info |= {"score_layers": self.score_layers, "seed": self.seed}
        if self._blocks:
            info |= {"num_blocks": len(self._blocks), "num_classes": self.num_classes}
        return info

    # The constructor's arguments, readable under their own names (LightningCLI and logged configurations).
    @property
    def goodness(self) -> Goodness:
        """``"sum"`` or ``"mean"``."""
        return self.objective.goodness

    @property
    def threshold(self) -> float | None:
        """``theta`` as given (``None``: the default per layer)."""
        return self.objective.threshold

    @property
    def sharpness(self) -> float:
        """``alpha``, the scale of the logit ``G - theta``."""
        return self.objective.sharpness

    @property
    def peer_weight(self) -> float:
        """The weight of peer normalisation."""
        return self.objective.peer_weight

    @property
    def peer_momentum(self) -> float:
        """The momentum of peer normalisation's running means."""
        return self.objective.peer_momentum

    @property
    def label_value(self) -> float:
        """The one-hot entry written into the input."""
        return self.objective.label_value

    @property
    def eps(self) -> float:
        """Added to the root mean square when length-normalising."""
        return self.objective.eps

    @property
    def seed(self) -> int:
        """The seed of the negative labels' generator."""
        return self.generator.seed

    @property
    def num_blocks(self) -> int:
        """``T``: the FF layers and the readout."""
        return len(self._blocks)

    @property
    def ff_layers(self) -> list[nn.Module]:
        """The blocks trained by their goodness: every block but the last."""
        return self._blocks[:-1]

    @property
    def readout(self) -> nn.Module:
        """The last block, trained by the loss ``training_step`` returns on detached features."""
        return self._blocks[-1]

    # ------------------------------------------------------------------ setup
    def setup(self, context: RuleSetup) -> None:
        blocks, module = list(context.blocks), context.module
        name = type(module).__name__
        if len(blocks) < 2:
            raise ValueError(
                f"{name}: Forward-Forward needs at least 2 blocks (FF layers, then a readout), got {len(blocks)}. "
                "HINT: return the hidden layers and the final classifier as separate blocks from configure_blocks()."
            )
        self.num_classes = class_count(name, context.block_output_shapes, self.requested_classes, "Forward-Forward")
        example = context.example_input
        if example is not None:
            values = example[0].numel() if example.ndim > 0 else 0
            if values < self.num_classes:
                raise ValueError(
                    f"{name}: block 0 ({describe(blocks[0])}) receives {values} values per sample (input shape "
                    f"{tuple(example.shape)}), fewer than the {self.num_classes} classes Forward-Forward writes over "
                    "the first input values. HINT: FF needs an input with at least as many values as classes."
                )
        for index, shape in enumerate(context.block_output_shapes[:-1]):
            if not isinstance(shape, torch.Size):
                raise TypeError(
                    f"{name}: FF layer {index} ({describe(blocks[index])}) does not return a tensor. "
                    "HINT: every block but the last must map a tensor to a tensor."
                )
        self._blocks = blocks
        self.generator.reset()
        if self.objective.peer_weight > 0:
            units = [int(torch.Size(shape[1:]).numel()) for shape in context.block_output_shapes[:-1]]
            existing = getattr(module, PEER_ATTRIBUTE, None)
            if isinstance(existing, FFPeerState) and existing.units == units:
                self._peer = existing
            else:
                self._peer = FFPeerState(units).to(device=context.device, dtype=context.dtype)
        else:
            self._peer = None

    def auxiliary_modules(self) -> Mapping[str, nn.Module]:
        return {} if self._peer is None else {PEER_ATTRIBUTE: self._peer}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"generator": self.generator.state(), "peer_units": None if self._peer is None else self._peer.units}

    def restore_modules(self, module: nn.Module, state: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
        self.generator.restore(state.get("generator"))
        units = state.get("peer_units")
        if units and getattr(module, PEER_ATTRIBUTE, None) is None:
            saved = checkpoint.get("state_dict", {}).get(f"{PEER_ATTRIBUTE}.mean_00")
            peer = FFPeerState(list(units))
            if isinstance(saved, Tensor):
                peer = peer.to(device=saved.device, dtype=saved.dtype)
            setattr(module, PEER_ATTRIBUTE, peer)

    # ------------------------------------------------------------------ steps
    def begin_step(self, step: RuleStep) -> BlockListener | None:
        assert self._blocks, "FFRule.setup was not called"
        labels = class_labels(step.batch, self.num_classes, "Forward-Forward")
        x = step.block_input()
        param = next((p for p in self.ff_layers[0].parameters() if p.is_floating_point()), None)
        if param is not None and x.is_floating_point():
            x = x.to(param.dtype)
        labels = labels.to(x.device)
        if self.observer is not None:
            self.observer.step_started()
        peer_means = [] if self._peer is None else [mean.clone() for mean in self._peer.means()]
        drawn = self.generator.state() if self.negatives == "random" else None  # hardest negatives draw nothing
        self._before_step = (drawn, peer_means)
        if self.negatives == "hardest":
            wrong = hardest_negative_labels(
                self.ff_layers, x, labels, self.num_classes, self.objective, self.score_layers
            )
        else:
            wrong = random_negative_labels(labels, self.num_classes, self.generator.get())
        ff_backward_labels(
            self.ff_layers,
            x,
            labels,
            wrong,
            self.num_classes,
            self.objective,
            peer_means=None if self._peer is None else self._peer.means(),
            scale=step.scale,
            observer=self.observer,
            on_layer_done=self._layer_done,
        )
        self._listener = _Listener(self, training=True)
        return self._listener

    def _layer_done(self, index: int, result: FFLayerResult) -> None:
        self._grad_ready([p for p in self._blocks[index].parameters() if p.requires_grad])
        self._emit("goodness_pos", index, result.goodness_pos)
        self._emit("goodness_neg", index, result.goodness_neg)
        self._emit("separation", index, result.separation)

    def end_forward(self, output: Any) -> None:
        self._before_step = None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.restore_grad_mode()
        if listener is not None and listener.seen != self.num_blocks:
            raise RuntimeError(
                f"training_step ran {listener.seen} of the {self.num_blocks} blocks. HINT: the forward in "
                "training_step must run every block once (call the model on the batch), so that the readout "
                "learns from the neutral-label features."
            )

    def after_backward(self) -> None:
        if self.observer is not None:
            self.observer.step_completed()

    def abort(self) -> None:
        if self._listener is not None:
            self._listener.restore_grad_mode()
        self._listener = None
        if self._before_step is not None:
            generator_state, peer_means = self._before_step
            self.generator.restore(generator_state)
            if self._peer is not None:
                with torch.no_grad():
                    for mean, saved in zip(self._peer.means(), peer_means):
                        mean.copy_(saved)
            self._before_step = None

    def inference_listener(self) -> BlockListener | None:
        return _Listener(self, training=False) if self._blocks else None
