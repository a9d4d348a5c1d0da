"""Scalable Forward-Forward (Krutsylo 2025) as a credit-assignment rule: ``Trainer(strategy="sff")``.

Every block but the last gets a goodness head (layer normalisation, then a small convolution with one output
channel per class). While the user's ``training_step`` runs its forward, each block's output is scored by its
head, the block's loss (cross-entropy over the class goodness vector, or the log-sum-exp margin variant) is
back-propagated through the head and the block at once, and the block's output is detached before it is fed
to the next block: back-propagation inside every block, never across blocks (the block-wise hybrid), with
one block's activations held at a time. The last block (the model's classifier) learns from the loss
``training_step`` returns, on its detached input. Validation, test and predict output the blocks' averaged
goodness votes (``inference="average"``), the last goodness block's vote (``"last"``), or the model's own
classifier (``"model"``). The pure-PyTorch form is :func:`~lightning_mpc.rules.sff.functional.sff_backward`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import Tensor, nn

from lightning_mpc.core.hooks import BlockListener
from lightning_mpc.core.partition import describe
from lightning_mpc.rules.base import CreditRule, RuleSetup, RuleStep
from lightning_mpc.rules.head_state import head_specs_state, rebuild_heads
from lightning_mpc.rules.labels import class_count, class_labels
from lightning_mpc.rules.sff.functional import (
    GoodnessHead,
    GoodnessHeadSpec,
    Logits,
    SFFLoss,
    class_goodness,
    goodness_head_spec,
    sff_block_loss,
    vote_scores,
)

__all__ = ["HEADS_ATTRIBUTE", "SFFRule"]

HEADS_ATTRIBUTE = "sff_heads"
"""The attribute of the LightningModule that holds the goodness heads."""

Inference = Literal["average", "last", "model"]


class _TrainListener:
    """Trains each block with its goodness head as its output appears, and feeds the next block a detached copy."""

    def __init__(self, rule: SFFRule, labels: Tensor, step: RuleStep) -> None:
        self.rule = rule
        self.labels = labels
        self.step = step
        self.seen = 0

    def block_started(self, index: int) -> None:
        self.seen = max(self.seen, index + 1)
        if self.rule.observer is not None:
            self.rule.observer.block_started(index)

    def block_input(self, index: int, x: Tensor) -> Tensor:
        return x.detach() if index > 0 else x

    def block_output(self, index: int, output: Tensor) -> Tensor:
        rule = self.rule
        observer = rule.observer
        if observer is not None:
            observer.block_finished(index, output)
        heads = rule.heads
        if heads is None or index >= len(heads):
            return output  # the classifier: the loss training_step returns trains it
        loss, goodness = sff_block_loss(
            output,
            heads[index],
            self.labels,
            rule.loss,
            rule.margin,
            rule.logits,
            scale=self.step.scale,
            observer=observer,
            index=index,
        )
        rule._grad_ready([p for m in (rule.blocks[index], heads[index]) for p in m.parameters() if p.requires_grad])
        if observer is not None:
            true_goodness = goodness.gather(1, self.labels.view(-1, 1)).mean()
            rule._emit("goodness_true", index, float(true_goodness))
            rule._emit("goodness_mean", index, float(goodness.mean()))
        return output.detach()


class _VoteListener:
    """Collects every goodness block's class goodness and replaces the model's output by the vote."""

    def __init__(self, rule: SFFRule) -> None:
        self.rule = rule
        self.goodness: list[Tensor] = []

    def block_started(self, index: int) -> None:
        if index == 0:
            self.goodness = []

    def block_output(self, index: int, output: Tensor) -> Tensor:
        heads = self.rule.heads
        assert heads is not None
        if index < len(heads):
            self.goodness.append(class_goodness(heads[index](output)))
            return output
        if index == len(heads):
            goodness, self.goodness = self.goodness, []
            vote = "last" if self.rule.inference == "last" else "average"
            scores = vote_scores(goodness, vote, self.rule.logits)
            return scores.to(output.dtype) if isinstance(output, Tensor) and output.is_floating_point() else scores
        return output


class SFFRule(CreditRule):
    """Scalable Forward-Forward: block-wise goodness losses over every class, back-propagation inside blocks only.

    Args:
        loss: ``"ce"`` (cross-entropy over the class goodness vector) or ``"margin"`` (``softplus(LSE of the
            other classes' logits - the true class's + margin)``; ``margin = 0`` is the cross-entropy).
        margin: the margin of ``loss="margin"``.
        logits: what the loss treats as logits: ``"log"`` (``log(g + 1e-6)``: the cross-entropy of the true
            class's share of the total goodness; stable under SGD) or ``"raw"`` (the goodness itself; its
            square makes plain SGD diverge on ResNet-18, use Adam or small steps).
        kernel_size: the goodness heads' convolution kernel (odd).
        inference: ``"average"`` (the blocks' averaged goodness votes), ``"last"`` (the last goodness block's
            vote) or ``"model"`` (the model's own classifier, the last block).
        num_classes: ``C``; default: the last block's output size.
    """

    name = "sff"
    metric_prefix = "sff"

    def __init__(
        self,
        loss: SFFLoss = "ce",
        margin: float = 1.0,
        logits: Logits = "log",
        kernel_size: int = 3,
        inference: Inference = "average",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}. HINT: use loss='ce'.")
        if logits not in ("log", "raw"):
            raise ValueError(f"logits must be 'log' or 'raw', got {logits!r}. HINT: use logits='log'.")
        if not margin >= 0:
            raise ValueError(f"margin must be 0 or more, got {margin}. HINT: use margin=1.0 (0 is the cross-entropy).")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}. HINT: use 3 or 1.")
        if inference not in ("average", "last", "model"):
            raise ValueError(
                f"inference must be 'average', 'last' or 'model', got {inference!r}. HINT: use inference='average'."
            )
        if num_classes is not None and num_classes < 2:
            raise ValueError(
                f"num_classes must be at least 2, got {num_classes}. HINT: leave it None to read it from the model."
            )
        self.loss: SFFLoss = loss
        self.margin = float(margin)
        self.logits: Logits = logits
        self.kernel_size = kernel_size
        self.inference: Inference = inference
        self.requested_classes = num_classes
        self.num_classes = num_classes or 0
        self.head_specs: list[GoodnessHeadSpec] | None = None
        self._blocks: list[nn.Module] = []
        self._heads: nn.ModuleList | None = None
        self._listener: _TrainListener | None = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"rule": self.name, "loss": self.loss, "margin": self.margin, "logits": self.logits}
        info |= {"kernel_size": self.kernel_size, "inference": self.inference}
        if self._blocks:
            info |= {"num_blocks": len(self._blocks), "num_classes": self.num_classes}
        return info

    @property
    def heads(self) -> nn.ModuleList | None:
        """The goodness heads, one per block but the last (after setup)."""
        return self._heads

    # ------------------------------------------------------------------ setup
    def setup(self, context: RuleSetup) -> None:
        from lightning_mpc.lightning.mixin import MPCMixin

        module, blocks = context.module, list(context.blocks)
        name = type(module).__name__
        if len(blocks) < 2:
            raise ValueError(
                f"{name}: Scalable FF needs at least 2 blocks (goodness blocks, then the classifier), got "
                f"{len(blocks)}. HINT: return the feature blocks and the classifier as separate blocks from configure_blocks()."
            )
        self.num_classes = class_count(name, context.block_output_shapes, self.requested_classes, "Scalable FF")
        expected = len(blocks) - 1
        custom = module.configure_heads() if isinstance(module, MPCMixin) else None
        existing = getattr(module, HEADS_ATTRIBUTE, None)
        if custom is not None:
            heads = custom if isinstance(custom, nn.ModuleList) else nn.ModuleList(custom)
            self.head_specs, source = None, "configure_heads()"
        elif isinstance(existing, nn.ModuleList) and len(existing) == expected:
            heads, source = existing, "the restored heads"
        else:
            self.head_specs = [
                goodness_head_spec(index, shape, self.num_classes, self.kernel_size)
                for index, shape in enumerate(context.block_output_shapes[:-1])
            ]
            heads, source = nn.ModuleList(GoodnessHead(spec) for spec in self.head_specs), "the built heads"
        if len(heads) != expected:
            raise ValueError(
                f"{name}: {source} gave {len(heads)} goodness heads for {len(blocks)} blocks; expected {expected} "
                f"(one per block but the last, {describe(blocks[-1])}, the classifier). HINT: return one head per block but the last."
            )
        self._blocks = blocks
        self._heads = heads.to(device=context.device, dtype=context.dtype)

    def auxiliary_modules(self) -> Mapping[str, nn.Module]:
        return {} if self._heads is None else {HEADS_ATTRIBUTE: self._heads}

    def checkpoint_state(self) -> dict[str, Any]:
        return head_specs_state(self.head_specs)

    def restore_modules(self, module: nn.Module, state: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
        if getattr(module, HEADS_ATTRIBUTE, None) is not None:
            return  # set up already (resuming fit): the state dict loads into the existing heads
        heads = rebuild_heads(
            module,
            HEADS_ATTRIBUTE,
            state,
            checkpoint.get("state_dict", {}),
            lambda specs: nn.ModuleList(GoodnessHead(GoodnessHeadSpec.from_dict(s)) for s in specs),
            "goodness heads",
        )
        if heads is not None:
            setattr(module, HEADS_ATTRIBUTE, heads)

    # ------------------------------------------------------------------ steps
    def begin_step(self, step: RuleStep) -> BlockListener | None:
        assert self._heads is not None, "SFFRule.setup was not called"
        labels = class_labels(step.batch, self.num_classes, "Scalable FF")
        if self.observer is not None:
            self.observer.step_started()
        self._listener = _TrainListener(self, labels, step)
        return self._listener

    def end_forward(self, output: Any) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and listener.seen != len(self._blocks):
            raise RuntimeError(
                f"training_step ran {listener.seen} of the {len(self._blocks)} blocks. HINT: the forward in "
                "training_step must run every block once (call the model on the batch)."
            )

    def after_backward(self) -> None:
        if self.observer is not None:
            self.observer.step_completed()

    def abort(self) -> None:
        self._listener = None

    def inference_listener(self) -> BlockListener | None:
        if self.inference == "model" or self._heads is None:
            return None
        return _VoteListener(self)
