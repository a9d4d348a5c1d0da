"""Target propagation by regularized inversion as a credit-assignment rule: ``Trainer(strategy="tp")``.

The rule trains the :class:`~lightning_mpc.rules.tp.RNNSequenceModel` held by the ``LightningModule``. During
the user's ``training_step`` a forward hook on its :class:`~lightning_mpc.rules.tp.UnrolledRNN` records the
inputs and states of the one forward the step runs; after ``training_step`` the rule computes the targets and
writes every gradient (:func:`~lightning_mpc.rules.tp.tp_backward_from_states`). The loss ``training_step``
returns is reported, not back-propagated. Validation, test and predict run the plain model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_mpc.core.hooks import BlockListener
from lightning_mpc.rules.base import CreditRule, RuleSetup, RuleStep
from lightning_mpc.rules.tp.functional import (
    INVERTIBLE,
    Form,
    Surrogate,
    TPResult,
    tp_backward_from_states,
    validate_form,
    validate_regularization,
    validate_surrogate,
)
from lightning_mpc.rules.tp.modules import RNNSequenceModel, UnrolledGRU, UnrolledRNN

__all__ = ["TPRule", "find_sequence_model"]


def find_sequence_model(module: nn.Module, path: str | None = None) -> RNNSequenceModel:
    """The :class:`RNNSequenceModel` inside ``module`` that target propagation trains.

    Args:
        module: the ``LightningModule`` (or any module holding the network).
        path: the submodule's dotted name (``"net"``, ``"encoder.rnn_model"``); ``None`` finds the only one.

    Raises:
        TypeError: when the only recurrent layers are PyTorch's fused ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` (or
            their cells), or ``path`` names something else.
        ValueError: when there is none, or several and no ``path``.
    """
    owner = type(module).__name__
    if path is not None:
        try:
            found = module.get_submodule(path)
        except AttributeError as error:
            raise ValueError(
                f"{owner} has no submodule {path!r} ({error}). HINT: pass TPRule(model=...) the attribute name of the "
                "RNNSequenceModel, e.g. model='net'."
            ) from None
        if not isinstance(found, RNNSequenceModel):
            raise TypeError(
                f"{owner}.{path} is a {type(found).__name__}, not an RNNSequenceModel. HINT: target propagation trains "
                "lightning_mpc.rules.tp.RNNSequenceModel (an explicitly unrolled RNN and its readout)."
            )
        return found
    models = [(name, m) for name, m in module.named_modules() if isinstance(m, RNNSequenceModel)]
    if len(models) == 1:
        return models[0][1]
    if len(models) > 1:
        names = ", ".join(name or "<the module itself>" for name, _ in models)
        raise ValueError(
            f"{owner} holds {len(models)} RNNSequenceModels ({names}). HINT: pass TPRule(model=<name>) to say which "
            "one target propagation trains."
        )
    fused = [(name, m) for name, m in module.named_modules() if isinstance(m, (nn.RNNBase, nn.RNNCellBase))]
    if fused:
        name, layer = fused[0]
        raise TypeError(
            f"{owner}.{name} is a {type(layer).__name__}: PyTorch runs all its time steps inside one fused (cuDNN) "
            "kernel, so target propagation cannot reach, let alone invert, the state of one step. HINT: build the "
            "network as lightning_mpc.rules.tp.RNNSequenceModel(input_size, hidden_size, output_size) (an explicitly "
            "unrolled tanh RNN with a readout); it trains with back-propagation too."
        )
    bare = [(name, m) for name, m in module.named_modules() if isinstance(m, (UnrolledRNN, UnrolledGRU))]
    if bare:
        name, cell = bare[0]
        raise ValueError(
            f"{owner}.{name} is an {type(cell).__name__} outside an RNNSequenceModel: the rule needs the readout too, to set "
            "the output target. HINT: hold RNNSequenceModel(input_size, hidden_size, output_size) instead (cell='gru' for a GRU)."
        )
    raise ValueError(
        f"{owner} holds no RNNSequenceModel, so target propagation has nothing to train. HINT: build the network as "
        "lightning_mpc.rules.tp.RNNSequenceModel and call it in training_step."
    )


@dataclass
class _Forward:
    """One recorded forward of the recurrent cell."""

    x: Tensor
    h0: Tensor | None
    states: Tensor


class TPRule(CreditRule):
    """Target propagation by regularized inversion over the time steps of an RNN: ``Trainer(strategy="tp")``.

    Roulet & Harchaoui, "Target Propagation via Regularized Inversion for Recurrent Neural Networks"
    (TMLR 2023, arXiv 2112.01453). Per training step: output target ``v_T = h_T - gamma_h * grad_{h_T} loss``,
    targets propagated backwards in time through regularized layer inverses (one Cholesky factorisation of
    ``W_hh^T W_hh + r I`` per step, triangular solves per time step; for a GRU cell, linearized form only, one
    batched factorisation of ``J_t^T J_t + r I`` per time step), then gradients of
    ``sum_t 1/2 ||h_t - v_t||^2`` for the recurrent cell and of the loss for the readout. The user's optimizer
    steps them (the paper: SGD, learning rate 0.1).

    Args:
        gamma_h: the step of the output targets (the paper: ``1e-2`` on temporal order, ``0.1`` on adding).
        r: the inverse's regularization, ``> 0`` (the paper: 10 on temporal order of length 60, 1 elsewhere).
        form: how targets travel back: ``"linearized"`` (the paper's), ``"difference"`` or ``"plain"``.
        surrogate: ``"unrolled"`` differentiates ``sum_t 1/2 ||h_t - v_t||^2`` through the unrolled graph (as the
            authors' code); ``"local"`` differentiates each step with its input held fixed (no backward through
            time).
        clamp: ``tanh`` targets are clamped to ``[-1 + clamp, 1 - clamp]`` before ``atanh``.
        model: the dotted name of the :class:`~lightning_mpc.rules.tp.RNNSequenceModel` in the
            ``LightningModule``; ``None`` finds the only one.
        telemetry_segments: the per-step surrogate losses and target residuals are reported for this many
            equal segments of the sequence (``tp/block_XX/...`` is segment ``XX``, the last one ends at ``T``).

    Raises:
        ValueError: for ``r <= 0``, ``gamma_h <= 0``, an unknown form or surrogate, or ``clamp`` outside (0, 1);
            from setup, for a non-invertible cell or a GRU with a form other than ``"linearized"``.

    Example::

        trainer = L.Trainer(strategy="tp")                                       # the defaults
        trainer = L.Trainer(strategy=RuleStrategy(rule=TPRule(gamma_h=1e-2, r=10.0)))
    """

    name = "tp"
    metric_prefix = "tp"
    owns_step = True
    uses_blocks = False
    data_parallel = True

    def __init__(
        self,
        gamma_h: float = 1e-2,
        r: float = 1.0,
        form: Form = "linearized",
        surrogate: Surrogate = "unrolled",
        clamp: float = 1e-3,
        model: str | None = None,
        telemetry_segments: int = 8,
    ) -> None:
        super().__init__()
        if isinstance(gamma_h, bool) or not isinstance(gamma_h, (int, float)) or not gamma_h > 0:
            raise ValueError(
                f"gamma_h must be a positive number, got {gamma_h!r}: the output target is h_T - gamma_h * grad loss. "
                "HINT: pass gamma_h=1e-2 (the paper's value on temporal order)."
            )
        if isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not 0.0 < clamp < 1.0:
            raise ValueError(f"clamp must be in (0, 1), got {clamp!r}. HINT: pass clamp=1e-3.")
        if isinstance(telemetry_segments, bool) or not isinstance(telemetry_segments, int) or telemetry_segments < 1:
            raise ValueError(f"telemetry_segments must be an integer >= 1, got {telemetry_segments!r}. HINT: pass 8.")
        self.gamma_h = float(gamma_h)
        self.r = validate_regularization(r)
        self.form: Form = validate_form(form)
        self.surrogate: Surrogate = validate_surrogate(surrogate)
        self.clamp = float(clamp)
        self.model_path = model
        self.telemetry_segments = telemetry_segments
        self.last_result: TPResult | None = None
        """The last step's result (targets, residuals, losses; detached)."""
        self._model: RNNSequenceModel | None = None
        self._hook: RemovableHandle | None = None
        self._step: RuleStep | None = None
        self._recording = False
        self._forwards: list[_Forward] = []

    def describe(self) -> dict[str, Any]:
        return {
            "rule": self.name,
            "gamma_h": self.gamma_h,
            "r": self.r,
            "form": self.form,
            "surrogate": self.surrogate,
            "clamp": self.clamp,
        }

    @property
    def model(self) -> RNNSequenceModel | None:
        """The network the rule trains (after setup)."""
        return self._model

    # ------------------------------------------------------------------ setup
    def setup(self, context: RuleSetup) -> None:
        model = find_sequence_model(context.module, self.model_path)
        if model.rnn.cell == "gru":
            if self.form != "linearized":
                raise ValueError(
                    f"{type(context.module).__name__}: its RNNSequenceModel has a GRU cell, which has no closed-form "
                    f"inverse, so the {self.form!r} target form is not defined for it (the GRU propagates targets "
                    'through its step Jacobian only). HINT: use form="linearized"'
                )
        elif (nonlinearity := model.rnn.nonlinearity) not in INVERTIBLE:
            raise ValueError(
                f"{type(context.module).__name__}: its RNN's nonlinearity {nonlinearity!r} is not invertible, so its "
                "time steps have no regularized inverse. HINT: build the RNNSequenceModel with nonlinearity='tanh' "
                "(or 'identity'), or train it with back-propagation (strategy='auto')."
            )
        self._remove_hook()
        self._model = model
        self._hook = model.rnn.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
        if not self._recording:
            return
        x = args[0] if args else kwargs["x"]
        h0 = args[1] if len(args) > 1 else kwargs.get("h0")
        self._forwards.append(_Forward(x=x, h0=h0, states=output))

    # ------------------------------------------------------------------ steps
    def begin_step(self, step: RuleStep) -> BlockListener | None:
        assert self._model is not None, "TPRule.setup was not called"
        self._step = step
        self._forwards = []
        self._recording = True
        if self.observer is not None:
            self.observer.step_started()
        return None

    def end_forward(self, output: Any) -> None:
        if not self._recording:
            return
        self._recording = False  # the rule's own work after this is not a forward of the user's step
        forwards = self._forwards
        if len(forwards) != 1:
            self.abort()
            did = "never called" if not forwards else f"called {len(forwards)} times"
            raise RuntimeError(
                f"training_step {did} the RNN the rule trains; target propagation needs exactly one forward of it on "
                "the batch. HINT: compute the loss from one call of the model in training_step (keep extra forwards "
                "in validation_step or under a separate module)."
            )

    def after_backward(self) -> None:
        forwards, model, step = self._forwards, self._model, self._step
        self.abort()
        if len(forwards) != 1 or model is None or step is None:
            return
        (forward,) = forwards
        result = tp_backward_from_states(
            model,
            forward.x,
            forward.states,
            step.loss_fn,
            gamma_h=self.gamma_h,
            r=self.r,
            form=self.form,
            surrogate=self.surrogate,
            clamp=self.clamp,
            scale=step.scale,
            h0=forward.h0,
        )
        self.last_result = result
        self._report(result)
        self._grad_ready([p for p in model.parameters() if p.requires_grad])

    def _report(self, result: TPResult) -> None:
        observer = self.observer
        if observer is None:
            return
        length = result.step_losses.shape[0]
        bounds = torch.linspace(0, length, min(self.telemetry_segments, length) + 1).round().long().tolist()
        targets = result.targets
        for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            segment_loss = result.step_losses[start:end].sum()
            observer.local_loss(index, targets[:, start:end], segment_loss)
            # Also as a signal: the rule has no blocks, so the generic telemetry logs its segments through signals
            # (tp/block_XX/loss, the name the dashboards chart).
            self._emit("loss", index, segment_loss)
            self._emit("target_residual", index, result.residuals[start:end].mean())
        self._emit("output_loss", None, result.loss)
        self._emit("surrogate", None, result.surrogate)
        observer.step_completed()

    def abort(self) -> None:
        self._step = None
        self._recording = False
        self._forwards = []

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def teardown(self) -> None:
        self.abort()
        self._remove_hook()

    def checkpoint_state(self) -> dict[str, Any]:
        return {}

    def restore_modules(self, module: nn.Module, state: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
        return None
