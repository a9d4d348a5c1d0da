"""PEPITA as a credit-assignment rule: ``Trainer(strategy="pepita")``.

The user's ``training_step`` runs unchanged and its forward is PEPITA's first pass: the block hooks record
block 0's input, every layer's activity and the network output, detached, with gradients off from block 0
to the last block (no autograd graph is built, so the loss ``training_step`` returns is only reported). After
``training_step`` the rule runs the modulated pass on ``x + F e`` over the blocks, replaying the random state
captured when block 0 started (same dropout masks), and writes every layer's update into ``.grad``; the
user's optimizer applies it. The pure-PyTorch form is :func:`~lightning_mpc.rules.pepita.pepita_backward`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_mpc.core.alignment import gradient_alignment
from lightning_mpc.core.hooks import BlockListener
from lightning_mpc.core.isolation import RandomState
from lightning_mpc.rules.base import CreditRule, RuleSetup, RuleStep
from lightning_mpc.rules.pepita.feedback import DEFAULT_FEEDBACK_SCALE, FeedbackProjection, mirror_angles
from lightning_mpc.rules.pepita.functional import (
    CONV_SCALES,
    OUTPUT_ERRORS,
    VARIANTS,
    ConvScale,
    FirstPassRecorder,
    OutputError,
    PepitaResult,
    Variant,
    run_modulated_pass,
)
from lightning_mpc.rules.pepita.layers import ActivityTaps, PepitaLayer, find_layers
from lightning_mpc.telemetry.probes import backprop_block_gradients, block_parameters

__all__ = ["FEEDBACK_ATTRIBUTE", "PEPITARule"]

FEEDBACK_ATTRIBUTE = "pepita_feedback"
"""The attribute of the LightningModule that holds the feedback projection ``F``."""


def _choice(name: str, value: str, choices: Sequence[str], hint: str) -> str:
    if value not in choices:
        raise ValueError(
            f"PEPITARule: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}. HINT: {hint}"
        )
    return value


def _non_negative_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"PEPITARule: {name} must be an integer >= 0, got {value!r}. HINT: pass 0 to turn it off.")
    return value


def _positive(name: str, value: float, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"PEPITARule: {name} must be a positive number, got {value!r}. HINT: {hint}")
    return float(value)


class _FirstPass:
    """The listener of the user's forward: PEPITA's first pass, recorded without a graph."""

    def __init__(self, rule: PEPITARule, step: RuleStep) -> None:
        self.rule = rule
        self.step = step
        self.recorder = FirstPassRecorder(len(rule.layers), keep_inputs=rule.variant == "hebbian", copy=rule._copy)
        self.x: Tensor | None = None
        self.output: Tensor | None = None
        self.random_state: RandomState | None = None
        self._grad_mode: bool | None = None

    def block_started(self, index: int) -> None:
        rule = self.rule
        if index == 0:
            self.random_state = RandomState.capture(rule._device)
            self._grad_mode = torch.is_grad_enabled()
            torch.set_grad_enabled(False)
            rule._taps.start(self.recorder.sink)  # type: ignore[union-attr]
        if rule.observer is not None:
            rule.observer.block_started(index)

    def block_input(self, index: int, x: Tensor) -> Tensor:
        if index == 0:
            self.x = x.detach().clone() if 0 in self.rule._in_place_inputs else x.detach()
        return x

    def block_output(self, index: int, output: Tensor) -> Tensor:
        rule = self.rule
        if rule.observer is not None:
            rule.observer.block_finished(index, output)
        if index == len(rule._blocks) - 1:
            self.output = output.detach()
            self.release()
        return output

    def release(self) -> None:
        """Stop recording and give the forward its gradient mode back."""
        if self.rule._taps is not None:
            self.rule._taps.stop()
        if self._grad_mode is not None:
            torch.set_grad_enabled(self._grad_mode)
            self._grad_mode = None


class PEPITARule(CreditRule):
    """PEPITA: two forward passes, the second on the error-modulated input; no backward pass.

    Every block must hold at most one trainable ``nn.Linear`` or ``nn.Conv2d`` followed by elementwise
    modules (see :func:`~lightning_mpc.rules.pepita.find_layers`); normalisation layers are refused. A bias
    is updated as a weight on a constant input.

    Args:
        output_error: the error that trains the last layer: ``"modulated"`` (the modulated pass's, as in the
            authors' tutorial) or ``"first"`` (the first pass's).
        variant: ``"pepita"`` (the difference of the passes) or ``"hebbian"`` (PEPITA-Hebbian: a Hebbian term
            of the first pass minus an anti-Hebbian term of the modulated one). The time-local variant needs two
            optimizer steps per batch: use :func:`~lightning_mpc.rules.pepita.pepita_time_local` in your own loop.
        feedback_scale: ``F`` is He-uniform times this (the authors' ``0.05``).
        seed: seeds the rule's own generator (``F``, the mirroring noise).
        conv_scale: convolution updates summed over output positions (``"sum"``), or divided by their number
            (``"mean"``) or its square root (``"sqrt"``), as the authors' convolutional code offers.
        mirror: weight mirroring: ``F`` factorised over the layers (linear layers only) and moved toward the
            forward weights by noise-driven Hebbian steps (:class:`~lightning_mpc.rules.pepita.FeedbackProjection`).
        mirror_lr: the step size of a mirroring step.
        mirror_noise: the standard deviation of the mirroring noise.
        mirror_weight_decay: the decay of the factors in a mirroring step.
        mirror_steps: mirroring steps per training batch in a mirroring epoch.
        mirror_normalize: rescale the factors after mirroring so that ``F`` keeps its initial standard deviation.
        pre_mirror_epochs: epochs at the start that only mirror (no weight update at all).
        mirror_every: after those, mirror (besides training) in every epoch ``e`` with ``(e + 1) % mirror_every
            == 0``; ``1``: every epoch, ``0``: never.
        alignment_every: every this many steps, measure the angle between PEPITA's update and
            back-propagation's gradient per block (one extra forward and backward); ``0``: never.

    Telemetry (through :attr:`observer`; metric names under ``pepita/``): ``block_XX/forward_ms`` is the first
    pass, ``block_XX/backward_ms`` the modulated pass and update of block ``XX``; ``block_XX/loss`` (the last
    block) the loss of the first pass's output; signals ``block_XX/modulation`` (RMS of ``h - h_err``),
    ``block_XX/bp_angle`` and ``bp_angle`` (degrees between PEPITA's update and back-propagation's gradient),
    ``block_XX/mirror_angle`` (degrees between ``B_l`` and ``W_l^T`` while mirroring) and ``held_bytes`` (what
    the first pass keeps for the second: PEPITA holds no autograd graph).
    """

    name = "pepita"
    metric_prefix = "pepita"
    owns_step = True
    uses_blocks = True
    data_parallel = True

    def __init__(
        self,
        output_error: OutputError = "modulated",
        variant: Variant = "pepita",
        feedback_scale: float = DEFAULT_FEEDBACK_SCALE,
        seed: int = 0,
        conv_scale: ConvScale = "sum",
        *,
        mirror: bool = False,
        mirror_lr: float = 0.1,
        mirror_noise: float = 0.1,
        mirror_weight_decay: float = 0.0,
        mirror_steps: int = 1,
        mirror_normalize: bool = True,
        pre_mirror_epochs: int = 0,
        mirror_every: int = 1,
        alignment_every: int = 0,
    ) -> None:
        super().__init__()
        if variant == "time_local":
            raise ValueError(
                "PEPITARule: the time-local variant applies an optimizer step after each of the two passes, and a "
                "Lightning strategy steps the optimizer once per batch. HINT: call "
                "lightning_mpc.rules.pepita.pepita_time_local(blocks, x, y, F, step) in your own training loop, or "
                "use variant='hebbian' (the same two terms, applied together)."
            )
        self.output_error = cast(OutputError, _choice("output_error", output_error, OUTPUT_ERRORS, "use 'modulated'."))
        self.variant = cast(Variant, _choice("variant", variant, VARIANTS, "use 'pepita' or 'hebbian'."))
        self.conv_scale = cast(ConvScale, _choice("conv_scale", conv_scale, CONV_SCALES, "use 'sum'."))
        self.feedback_scale = _positive("feedback_scale", feedback_scale, "the authors use 0.05.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"PEPITARule: seed must be an integer, got {seed!r}. HINT: pass seed=0.")
        self.seed = seed
        self.mirror = bool(mirror)
        self.mirror_lr = _positive("mirror_lr", mirror_lr, "try 0.1.")
        self.mirror_noise = _positive("mirror_noise", mirror_noise, "try 0.1.")
        if not math.isfinite(mirror_weight_decay) or mirror_weight_decay < 0:
            raise ValueError(
                f"PEPITARule: mirror_weight_decay must be >= 0, got {mirror_weight_decay!r}. HINT: pass 0."
            )
        self.mirror_weight_decay = float(mirror_weight_decay)
        self.mirror_steps = _non_negative_int("mirror_steps", mirror_steps)
        self.mirror_normalize = bool(mirror_normalize)
        self.pre_mirror_epochs = _non_negative_int("pre_mirror_epochs", pre_mirror_epochs)
        self.mirror_every = _non_negative_int("mirror_every", mirror_every)
        self.alignment_every = _non_negative_int("alignment_every", alignment_every)
        if not self.mirror and self.pre_mirror_epochs:
            raise ValueError(
                f"PEPITARule: pre_mirror_epochs={pre_mirror_epochs} without mirror=True would skip training for "
                f"{pre_mirror_epochs} epochs. HINT: pass mirror=True, or pre_mirror_epochs=0."
            )
        self.layers: list[PepitaLayer] = []
        self.feedback: FeedbackProjection | None = None
        self.last_result: PepitaResult | None = None
        """The last step's outputs, error and modulation (its updates only on alignment steps)."""
        self._blocks: list[nn.Module] = []
        self._taps: ActivityTaps | None = None
        self._trainer: Any = None
        self._device = torch.device("cpu")
        self._copy = False
        self._in_place_inputs: frozenset[int] = frozenset()
        self._pass: _FirstPass | None = None
        self._steps = 0

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "rule": self.name,
            "output_error": self.output_error,
            "variant": self.variant,
            "feedback_scale": self.feedback_scale,
            "seed": self.seed,
            "conv_scale": self.conv_scale,
            "mirror": self.mirror,
        }
        if self.mirror:
            info.update(
                mirror_lr=self.mirror_lr,
                mirror_noise=self.mirror_noise,
                mirror_weight_decay=self.mirror_weight_decay,
                mirror_steps=self.mirror_steps,
                mirror_normalize=self.mirror_normalize,
                pre_mirror_epochs=self.pre_mirror_epochs,
                mirror_every=self.mirror_every,
            )
        if self.layers:
            info["layers"] = [f"block {layer.block}: {type(layer.module).__name__}" for layer in self.layers]
        return info

    # ------------------------------------------------------------------ schedule
    def phase(self, epoch: int) -> tuple[bool, bool]:
        """``(train, mirror)`` in ``epoch``: whether PEPITA updates the weights, whether ``F`` is mirrored."""
        if not self.mirror:
            return True, False
        if epoch < self.pre_mirror_epochs:
            return False, True
        return True, bool(self.mirror_every) and (epoch + 1) % self.mirror_every == 0

    # ------------------------------------------------------------------ setup
    def setup(self, context: RuleSetup) -> None:
        blocks = list(context.blocks)
        layers = find_layers(blocks)
        if context.example_input is None or not context.block_output_shapes:
            raise ValueError("PEPITARule needs the blocks' dry run (example input and output shapes).")
        input_size = context.example_input[0].numel()
        output_shape = context.block_output_shapes[-1]
        num_outputs = math.prod(output_shape[1:])
        hidden = self._hidden_sizes(layers, input_size, num_outputs) if self.mirror else None
        module = context.module
        existing = getattr(module, FEEDBACK_ATTRIBUTE, None)
        if isinstance(existing, FeedbackProjection) and (
            existing.input_size,
            existing.num_outputs,
            existing.hidden_sizes,
        ) == (input_size, num_outputs, hidden):
            feedback = existing  # built by an earlier fit, or restored from a checkpoint
        else:
            feedback = FeedbackProjection(input_size, num_outputs, hidden)
            feedback.reset(torch.Generator().manual_seed(self.seed), self.feedback_scale)
        self.feedback = feedback.to(device=context.device, dtype=context.dtype)
        self._warn_untrained(module, layers)
        if self._taps is not None:
            self._taps.remove()
        self._blocks = blocks
        self.layers = layers
        self._taps = ActivityTaps(layers)
        self._trainer = context.trainer
        self._device = context.device
        self._in_place_inputs = context.in_place_inputs
        self._copy = any(getattr(m, "inplace", False) for block in blocks for m in block.modules())
        self._steps = 0

    @staticmethod
    def _hidden_sizes(layers: Sequence[PepitaLayer], input_size: int, num_outputs: int) -> list[int]:
        """The factor sizes of a mirrored ``F``: the layers must be linear and chain from input to output."""
        convs = [layer.block for layer in layers if not isinstance(layer.module, nn.Linear)]
        if convs:
            raise ValueError(
                f"PEPITARule(mirror=True) factorises F over linear layers, but block(s) {convs} hold convolutions. "
                "HINT: use mirror=False for convolutional networks."
            )
        sizes = [(layer.module.in_features, layer.module.out_features) for layer in layers]  # type: ignore[union-attr]
        chain = [input_size] + [out for _, out in sizes]
        expected = [inp for inp, _ in sizes] + [num_outputs]
        if chain != expected:
            raise ValueError(
                f"PEPITARule(mirror=True) needs linear layers that map the input ({input_size} elements) to the output "
                f"({num_outputs}) one after the other, got layers (in, out) = {sizes}. HINT: use mirror=False for "
                "networks that reshape or pool between layers."
            )
        return [out for _, out in sizes[:-1]]

    def _warn_untrained(self, module: nn.Module, layers: Sequence[PepitaLayer]) -> None:
        trained = {id(p) for layer in layers for p in layer.parameters}
        left = [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in trained]
        if left:
            shown = ", ".join(left[:5]) + (", ..." if len(left) > 5 else "")
            rank_zero_warn(
                f"PEPITA trains only the Linear/Conv2d layers of the blocks; {len(left)} trainable parameters of "
                f"{type(module).__name__} get no gradient ({shown}). HINT: freeze them (requires_grad=False) or "
                "include their layers in the blocks."
            )

    def auxiliary_modules(self) -> Mapping[str, nn.Module]:
        return {} if self.feedback is None else {FEEDBACK_ATTRIBUTE: self.feedback}

    def checkpoint_state(self) -> dict[str, Any]:
        feedback = self.feedback
        if feedback is None:
            return {}
        return {
            "input_size": feedback.input_size,
            "num_outputs": feedback.num_outputs,
            "hidden_sizes": feedback.hidden_sizes,
        }

    def restore_modules(self, module: nn.Module, state: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
        if getattr(module, FEEDBACK_ATTRIBUTE, None) is not None or "input_size" not in state:
            return
        feedback = FeedbackProjection(state["input_size"], state["num_outputs"], state.get("hidden_sizes"))
        saved = checkpoint.get("state_dict", {}).get(
            f"{FEEDBACK_ATTRIBUTE}.{'matrix' if feedback.hidden_sizes is None else 'factor_0'}"
        )
        if isinstance(saved, Tensor):
            feedback = feedback.to(device=saved.device, dtype=saved.dtype)
        setattr(module, FEEDBACK_ATTRIBUTE, feedback)

    # ------------------------------------------------------------------ steps
    def _epoch(self) -> int:
        return int(getattr(self._trainer, "current_epoch", 0) or 0)

    def begin_step(self, step: RuleStep) -> BlockListener | None:
        assert self._taps is not None, "PEPITARule.setup was not called"
        self.abort()
        if self.observer is not None:
            self.observer.step_started()
        self._pass = _FirstPass(self, step)
        return self._pass

    def end_forward(self, output: Any) -> None:
        first = self._pass
        if first is not None and first.output is None:
            self.abort()
            raise RuntimeError(
                f"training_step did not run the model's {len(self._blocks)} blocks through to the last one. HINT: the "
                "forward in training_step must run every block once (call the model on the batch)."
            )

    def _forward_context(self) -> contextlib.AbstractContextManager[Any]:
        plugin = getattr(self._trainer, "precision_plugin", None)
        return plugin.train_step_context() if plugin is not None else contextlib.nullcontext()

    def after_backward(self) -> None:
        from lightning_mpc.lightning.mixin import batch_target

        first, self._pass = self._pass, None
        if first is None or first.output is None or first.x is None or first.random_state is None:
            return
        assert self.feedback is not None and self._taps is not None
        step = first.step
        train, mirror = self.phase(self._epoch())
        observer = self.observer
        self._steps += 1
        if observer is not None:
            observer.local_loss(len(self._blocks) - 1, first.output, step.loss_fn(first.output).detach())
        if train:
            record = first.recorder.result(first.x, first.output, first.random_state)
            held = record.held_bytes()
            probe = bool(observer is not None and self.alignment_every and self._steps % self.alignment_every == 0)
            result = run_modulated_pass(
                self._blocks,
                self._taps,
                record,
                batch_target(step.batch),
                self.feedback.weight(),
                output_error=self.output_error,
                variant=self.variant,
                conv_scale=self.conv_scale,
                scale=step.scale,
                forward_context=self._forward_context,
                observer=observer,
                keep_updates=probe,
            )
            self.last_result = result
            if observer is not None:
                self._emit("held_bytes", None, float(held))
                for layer, value in zip(self.layers, result.modulation):
                    self._emit("modulation", layer.block, value)
                if probe:
                    self._emit_alignment(first.x, result, step, first.random_state)
            self._grad_ready([p for layer in self.layers for p in layer.parameters])
        if mirror and self.mirror_steps:
            self.feedback.mirror(
                [layer.module for layer in self.layers],
                noise_std=self.mirror_noise,
                lr=self.mirror_lr,
                weight_decay=self.mirror_weight_decay,
                samples=first.x.shape[0],
                steps=self.mirror_steps,
                normalize=self.mirror_normalize,
            )
        if mirror and observer is not None:
            for layer, angle in zip(self.layers, self.mirror_angles()):
                self._emit("mirror_angle", layer.block, angle)
        if observer is not None:
            observer.step_completed()

    def mirror_angles(self) -> list[float]:
        """Degrees between every factor ``B_l`` of a mirrored ``F`` and ``W_l^T`` (empty without mirroring)."""
        if self.feedback is None or not self.feedback.mirrored:
            return []
        return mirror_angles([layer.module for layer in self.layers], self.feedback.factors)

    def _emit_alignment(self, x: Tensor, result: PepitaResult, step: RuleStep, state: RandomState) -> None:
        """Angles between PEPITA's update and back-propagation's gradient, per block and over the network."""
        by_param = {
            id(p): u for layer, updates in zip(self.layers, result.updates) for p, u in zip(layer.parameters, updates)
        }
        params = block_parameters(self._blocks)
        update = [[by_param.get(id(p)) for p in group] for group in params]
        reference = backprop_block_gradients(
            self._blocks, [], x, loss=step.loss_fn, random_state=state, forward_context=self._forward_context
        )
        alignment = gradient_alignment(update, reference, params)
        for index, cosine in enumerate(alignment.blocks):
            if params[index] and math.isfinite(cosine):
                self._emit("bp_angle", index, math.degrees(math.acos(max(-1.0, min(1.0, cosine)))))
        if math.isfinite(alignment.total):
            self._emit("bp_angle", None, math.degrees(math.acos(max(-1.0, min(1.0, alignment.total)))))

    def abort(self) -> None:
        first, self._pass = self._pass, None
        if first is not None:
            first.release()
        if self._taps is not None:
            self._taps.stop()

    def teardown(self) -> None:
        self.abort()
        if self._taps is not None:
            self._taps.remove()
            self._taps = None
