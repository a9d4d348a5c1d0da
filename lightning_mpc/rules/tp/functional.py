"""Target propagation by regularized inversion (Roulet & Harchaoui, arXiv 2112.01453), pure PyTorch.

The time steps of a recurrent network are its layers. With ``a`` the nonlinearity (``tanh``, or the
identity for a linear RNN), the layer of step ``t`` is

    h_t = f_t(h_{t-1}) = a(W h_{t-1} + U x_t + b),        t = 1..T,  h_0 = 0,

and a readout maps the last state (``y = V h_T + c``) or every state (sequence labelling) to predictions.
One training step of the rule:

1. **Output targets.** ``v_T = h_T - gamma_h * grad_{h_T} loss`` (every ``v_t`` also gets
   ``- gamma_h * grad_{h_t} loss`` when the readout reads every state). The readout's parameters receive the
   loss's own gradient.
2. **Regularized layer inverse.**
   ``g_t(v) = argmin_h ||W h - (a^{-1}(v) - U x_t - b)||^2 + r ||h||^2``
   ``= (W^T W + r I)^{-1} W^T (a^{-1}(v) - U x_t - b)``,
   with ``a^{-1} = atanh`` on an input clamped to ``[-1 + clamp, 1 - clamp]``. ``W^T W + r I`` is factorised
   once per step (one Cholesky factorisation, :func:`factorize`); every time step then costs one pair of
   triangular solves against that factor.
3. **Targets, backwards in time.** ``"linearized"`` (the default):
   ``v_{t-1} = h_{t-1} + J_{g_t}(h_t) (v_t - h_t)`` with ``J_{g_t}(h_t) = (W^T W + r I)^{-1} W^T diag(a^{-1}'(h_t))``;
   ``"difference"``: ``v_{t-1} = h_{t-1} + g_t(v_t) - g_t(h_t)``; ``"plain"``: ``v_{t-1} = g_t(v_t)``.
4. **Parameter step** on the surrogate ``S = sum_t 1/2 ||h_t - v_t||^2`` (summed over the batch, targets fixed):
   ``"unrolled"`` differentiates ``h_t`` through the whole unrolled graph (what the authors' code does);
   ``"local"`` differentiates each step's layer with its input ``h_{t-1}`` held fixed,
   ``sum_t (d f_t / d theta)^T (h_t - v_t)``: no backward through time, one batched pass over all steps.

**GRU.** A GRU step (:class:`~lightning_mpc.rules.tp.UnrolledGRU`) has no closed-form inverse. Its targets
travel back in the ``"linearized"`` form through the step's Jacobian ``J_t = d h_t / d h_{t-1}`` (per sample):
``v_{t-1} = h_{t-1} + (J_t^T J_t + r I)^{-1} J_t^T (v_t - h_t)``, the regularized Gauss-Newton step of
``argmin_h ||f_t(h) - v_t||^2 + r ||h - h_{t-1}||^2`` from ``h_{t-1}`` (:func:`linearized_inverse_step`,
:func:`propagate_targets_through_jacobians`): one batched Cholesky factorisation of ``N`` matrices ``d x d``
per time step, ``O(N d^3)`` per step against the tanh RNN's ``O(N d^2)`` triangular solves after one ``O(d^3)``
factorisation per training step. The tanh RNN's linearized form is the same step in pre-activation
coordinates: ``(W^T W + r I)^{-1} W^T`` applied to ``diag(1 / (1 - h_t^2)) (v_t - h_t)``, i.e. with ``J_t``
replaced by ``W`` and the displacement by its pre-activation image; at ``r = 0`` both are ``J_t^{-1}``.
The ``"difference"`` and ``"plain"`` forms need the exact regularized inverse, which a GRU lacks: refused.

For a linear RNN with an orthogonal ``W`` and ``r = 0`` the linearized displacement ``v_t - h_t`` equals
``-gamma_h`` times back-propagation-through-time's state gradient ``grad_{h_t} loss`` at every step, and the
layer-local surrogate's gradient is ``gamma_h`` times BPTT's parameter gradient.

Everything here is plain PyTorch; :class:`~lightning_mpc.rules.tp.TPRule` runs it inside Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from lightning_mpc.rules.tp.modules import RNNSequenceModel, UnrolledGRU, UnrolledRNN

__all__ = [
    "INVERTIBLE",
    "Form",
    "Nonlinearity",
    "Surrogate",
    "TPResult",
    "activation",
    "check_sequence",
    "factorize",
    "inverse_jvp",
    "linearized_inverse_step",
    "output_displacements",
    "propagate_targets",
    "propagate_targets_through_jacobians",
    "regularized_inverse",
    "tp_backward",
    "tp_backward_from_states",
    "validate_form",
    "validate_regularization",
    "validate_surrogate",
]

Form = Literal["linearized", "difference", "plain"]
"""How targets travel backwards in time (see the module documentation)."""
Surrogate = Literal["unrolled", "local"]
"""How the parameters are stepped on ``sum_t 1/2 ||h_t - v_t||^2``: through the whole unrolled graph, or per step."""
Nonlinearity = Literal["tanh", "identity", "relu"]
"""The recurrent cell's nonlinearity; ``relu`` trains with back-propagation only (it has no inverse)."""
INVERTIBLE: tuple[str, ...] = ("tanh", "identity")
"""The nonlinearities target propagation can invert."""

LossOnPrediction = Callable[[Tensor], Tensor]
LossScale = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- validation
def validate_form(form: str) -> Form:
    """``form`` if it names a target propagation form, else a ``ValueError`` with a HINT."""
    if form not in get_args(Form):
        raise ValueError(
            f"Unknown target propagation form {form!r}. HINT: use 'linearized' (the default, the paper's), "
            "'difference' or 'plain'."
        )
    return form  # type: ignore[return-value]


def validate_surrogate(surrogate: str) -> Surrogate:
    """``surrogate`` if it names a way to differentiate the surrogate, else a ``ValueError`` with a HINT."""
    if surrogate not in get_args(Surrogate):
        raise ValueError(
            f"Unknown surrogate {surrogate!r}. HINT: use 'unrolled' (differentiate sum_t 1/2 ||h_t - v_t||^2 through "
            "the unrolled graph, as the authors' code) or 'local' (each step with its input held fixed, no "
            "backward through time)."
        )
    return surrogate  # type: ignore[return-value]


def validate_regularization(r: float, *, allow_zero: bool = False) -> float:
    """The regularization ``r`` of the layer inverse as a float.

    Args:
        r: the weight of ``r ||h||^2``.
        allow_zero: accept ``r = 0`` (the unregularized inverse, defined only for an invertible ``W``; the
            pure functions accept it for exactness checks, the rule does not).

    Raises:
        ValueError: for ``r < 0``, ``r = 0`` unless allowed, or a value that is not a finite number.
    """
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not torch.isfinite(torch.tensor(float(r))):
        raise ValueError(f"The regularization r must be a finite number, got {r!r}. HINT: pass r=1.0 (or 10.0).")
    if r < 0 or (r == 0 and not allow_zero):
        raise ValueError(
            f"The regularization r must be > 0, got r={r}. The inverse argmin_h ||W h - z||^2 + r ||h||^2 is defined "
            "for every W only when r > 0 (r = 0 needs an invertible W_hh and amplifies its small singular values). "
            "HINT: pass r=1.0 (the paper uses 1 to 10)."
        )
    return float(r)


def check_sequence(x: Tensor, input_size: int, owner: str = "UnrolledRNN") -> None:
    """Raise a ``ValueError`` with a HINT unless ``x`` is a ``(batch, length >= 1, input_size)`` tensor."""
    if not isinstance(x, Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{owner} expects sequences of shape (batch, length, {input_size}), got {shape}. "
            "HINT: batch-first sequences; reshape a flat signal with x.view(batch, length, features)."
        )
    if x.shape[1] == 0:
        raise ValueError(
            f"{owner} got sequences of length 0 (input shape {tuple(x.shape)}): there is no time step to train. "
            "HINT: give every sequence at least one step (check the data's length and chunk settings)."
        )
    if x.shape[2] != input_size:
        raise ValueError(
            f"{owner} expects {input_size} features per step, got input of shape {tuple(x.shape)}. "
            f"HINT: build the RNN with input_size={x.shape[2]}, or fix the data's feature size."
        )


# --------------------------------------------------------------------------- the nonlinearity
def activation(nonlinearity: Nonlinearity, z: Tensor) -> Tensor:
    """``a(z)`` for the cell's nonlinearity."""
    if nonlinearity == "tanh":
        return torch.tanh(z)
    if nonlinearity == "relu":
        return torch.relu(z)
    return z


def _check_invertible(nonlinearity: str) -> None:
    if nonlinearity not in INVERTIBLE:
        raise ValueError(
            f"A {nonlinearity!r} recurrent cell is not invertible, so its layers have no regularized inverse "
            "(target propagation inverts a(W h + U x + b)). HINT: use nonlinearity='tanh' (or 'identity'), or "
            "train this cell with back-propagation (strategy='auto')."
        )


def _check_cell(rnn: UnrolledRNN | UnrolledGRU, form: str) -> None:
    """Raise a ``ValueError`` with a HINT unless target propagation can carry ``form`` targets through ``rnn``."""
    if rnn.cell == "gru":
        if form != "linearized":
            raise ValueError(
                f"The {form!r} target form needs the exact regularized inverse of a time step, "
                "argmin_h ||f_t(h) - v||^2 + r ||h||^2, which a GRU step does not have in closed form (its three "
                "gates depend on h); the GRU propagates targets through its step Jacobian only. "
                'HINT: use form="linearized"'
            )
        return
    _check_invertible(rnn.nonlinearity)


def _inverse_activation(nonlinearity: str, v: Tensor, clamp: float) -> Tensor:
    if nonlinearity == "tanh":
        return torch.atanh(v.clamp(-1.0 + clamp, 1.0 - clamp))
    return v


def _inverse_activation_slope(nonlinearity: str, h: Tensor, clamp: float) -> Tensor | None:
    """``(a^{-1})'(h)``; ``None`` for the identity."""
    if nonlinearity == "tanh":
        return 1.0 / (1.0 - h.clamp(-1.0 + clamp, 1.0 - clamp).square())
    return None


# --------------------------------------------------------------------------- the regularized inverse
def _solver_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of the factorisations: float32 for 16-bit weights (``precision="bf16-true"``, ``"16-true"``),
    which CPU Cholesky does not support and whose 8 or 11 mantissa bits would lose ``r`` in rounding."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def factorize(weight_hh: Tensor, r: float) -> Tensor:
    """The lower Cholesky factor ``L`` of ``W^T W + r I`` (``W = weight_hh``), computed once per training step.

    In float32 for 16-bit weights; :func:`regularized_inverse` and :func:`inverse_jvp` return the weights' dtype.

    Raises:
        ValueError: if ``W^T W + r I`` is not positive definite in the weights' precision (``r = 0`` with a
            singular ``W``, or non-finite weights).
    """
    weight = weight_hh.detach()
    weight = weight.to(_solver_dtype(weight.dtype))
    gram = weight.mT @ weight
    gram.diagonal().add_(r)
    factor, info = torch.linalg.cholesky_ex(gram)
    pivots = factor.diagonal().square()
    # A pivot at rounding level relative to the largest (condition number about 1 / eps or more) means that
    # W^T W + r I is singular in this precision: r = 0 with a singular W, or weights that have blown up.
    singular = bool(pivots.min() <= 2 * torch.finfo(gram.dtype).eps * pivots.max())
    if int(info) != 0 or singular or not bool(torch.isfinite(factor).all()):
        if not bool(torch.isfinite(weight).all()):
            cause = "W_hh has non-finite entries: training diverged"
        elif r == 0:
            cause = "W_hh is singular and r = 0"
        else:
            norm = float(torch.linalg.matrix_norm(weight, ord=2))
            cause = f"W_hh's norm {norm:.3g} is so large that r = {r} is lost in rounding: training is diverging"
        raise ValueError(
            f"W_hh^T W_hh + r I ({weight.shape[0]} x {weight.shape[0]}) is not positive definite in "
            f"{str(weight.dtype).removeprefix('torch.')} ({cause}), so the layer inverse is not defined. "
            "HINT: use r > 0 (the rule requires it); if training diverged, lower the learning rate or gamma_h."
        )
    return factor


def _solve(factor: Tensor, rows: Tensor) -> Tensor:
    """``(W^T W + r I)^{-1} z`` for every row ``z`` of ``rows`` (any leading shape), with the Cholesky factor."""
    flat = rows.reshape(-1, rows.shape[-1]).to(factor.dtype)
    return torch.cholesky_solve(flat.mT, factor).mT.reshape(rows.shape).to(rows.dtype)


def regularized_inverse(
    rnn: UnrolledRNN, v: Tensor, x_t: Tensor, factor: Tensor, clamp: float = 1e-3
) -> Tensor:
    """The regularized inverse of step ``t``'s layer: ``argmin_h ||W h - (a^{-1}(v) - U x_t - b)||^2 + r ||h||^2``.

    Args:
        rnn: the cell (its ``weight_hh`` ``W``, ``weight_ih`` ``U``, ``bias`` ``b`` and nonlinearity ``a``).
        v: targets of ``h_t``, shape ``(..., hidden)``.
        x_t: the step's inputs, shape ``(..., input)`` (the same leading shape).
        factor: :func:`factorize` of ``W`` with the regularization ``r``.
        clamp: ``tanh`` targets are clamped to ``[-1 + clamp, 1 - clamp]`` before ``atanh``.

    Returns:
        ``(W^T W + r I)^{-1} W^T (a^{-1}(v) - U x_t - b)``, shape ``(..., hidden)``.
    """
    _check_invertible(rnn.nonlinearity)
    with torch.no_grad():
        residual = _inverse_activation(rnn.nonlinearity, v, clamp) - F.linear(x_t, rnn.weight_ih, rnn.bias)
        return _solve(factor, residual @ rnn.weight_hh)


def inverse_jvp(rnn: UnrolledRNN, h_t: Tensor, direction: Tensor, factor: Tensor, clamp: float = 1e-3) -> Tensor:
    """``J_{g_t}(h_t) direction``: the regularized inverse's Jacobian at the forward state, applied to ``direction``.

    ``J_{g_t}(h_t) = (W^T W + r I)^{-1} W^T diag((a^{-1})'(h_t))``; it does not depend on ``x_t``.
    """
    _check_invertible(rnn.nonlinearity)
    with torch.no_grad():
        slope = _inverse_activation_slope(rnn.nonlinearity, h_t, clamp)
        scaled = direction if slope is None else direction * slope
        return _solve(factor, scaled @ rnn.weight_hh)


def linearized_inverse_step(jacobian: Tensor, direction: Tensor, r: float) -> Tensor:
    """``(J^T J + r I)^{-1} J^T direction`` per sample: the regularized Gauss-Newton inverse of a step's Jacobian.

    Args:
        jacobian: ``J = d h_t / d h_{t-1}``, shape ``(batch, d, d)``.
        direction: the displacement ``v_t - h_t`` of the step's output, shape ``(batch, d)``.
        r: the regularization (``r = 0`` gives ``J^{-1}`` for an invertible ``J``).

    Returns:
        ``(batch, d)``. Costs one batched Cholesky factorisation of ``batch`` matrices ``d x d`` (``O(batch d^3)``).

    Raises:
        ValueError: if some ``J^T J + r I`` is not positive definite (``r = 0`` with a singular ``J``, or
            non-finite states).
    """
    out_dtype = direction.dtype
    work = _solver_dtype(jacobian.dtype)
    jacobian, direction = jacobian.to(work), direction.to(work)
    with torch.no_grad():
        gram = jacobian.mT @ jacobian
        gram.diagonal(dim1=-2, dim2=-1).add_(r)
        factor, info = torch.linalg.cholesky_ex(gram)
        if bool((info != 0).any()) or not bool(torch.isfinite(factor).all()):
            bad = int((info != 0).nonzero()[0, 0]) if bool((info != 0).any()) else -1
            raise ValueError(
                f"J^T J + r I of a step Jacobian ({jacobian.shape[-1]} x {jacobian.shape[-1]}, sample {bad}) is not "
                f"positive definite with r = {r} (a singular Jacobian with r = 0, or non-finite states: training "
                "diverged), so the linearized inverse is not defined. HINT: use r > 0 (the rule requires it); if "
                "training diverged, lower the learning rate or gamma_h."
            )
        return torch.cholesky_solve((jacobian.mT @ direction.unsqueeze(-1)), factor).squeeze(-1).to(out_dtype)


def propagate_targets_through_jacobians(
    rnn: UnrolledGRU,
    x: Tensor,
    states: Tensor,
    displacements: Tensor,
    r: float,
) -> Tensor:
    """Linearized targets ``v_1..v_T`` for a cell without a closed-form inverse (a GRU), through its Jacobians.

    ``v_T = h_T + d_T``; then for ``t = T..2``,
    ``v_{t-1} = h_{t-1} + (J_t^T J_t + r I)^{-1} J_t^T (v_t - h_t) + d_{t-1}`` with ``J_t = d h_t / d h_{t-1}``
    (``rnn.step_jacobian(h_{t-1}, x_t)``) per sample: one batched Cholesky factorisation per time step.

    Args:
        rnn: the cell (``step_jacobian(h, x_t) -> (batch, d, d)``).
        x: inputs ``(batch, T, input)``.
        states: ``h_1..h_T``, ``(batch, T, hidden)``.
        displacements: direct displacements ``(batch, T, hidden)``.
        r: the regularization.

    Returns:
        The targets, ``(batch, T, hidden)``, detached.
    """
    with torch.no_grad():
        states = states.detach()
        targets = torch.empty_like(states)
        target = states[:, -1] + displacements[:, -1]
        for i in range(states.shape[1] - 1, -1, -1):  # targets[:, i] is v_{i+1}; its step reads h_i and x[:, i]
            targets[:, i] = target
            if i == 0:
                break
            jacobian = rnn.step_jacobian(states[:, i - 1], x[:, i])
            step = linearized_inverse_step(jacobian, target - states[:, i], r)
            target = states[:, i - 1] + step + displacements[:, i - 1]
    return targets


# --------------------------------------------------------------------------- targets
def output_displacements(
    readout: nn.Module,
    states: Tensor,
    loss_fn: LossOnPrediction,
    gamma_h: float,
    *,
    per_step: bool,
    scale: LossScale | None = None,
) -> tuple[Tensor, Tensor]:
    """The loss, its gradient for the readout, and the direct displacements ``-gamma_h * grad_{h_t} loss``.

    The readout reads detached states, so its parameters receive exactly the loss's gradient (passed through
    ``scale`` and accumulated into ``.grad``); nothing reaches the recurrent cell from here.

    Args:
        readout: maps states ``(..., hidden)`` to predictions.
        states: ``h_1..h_T``, shape ``(batch, T, hidden)`` (any graph is ignored).
        loss_fn: ``loss_fn(prediction) -> scalar``.
        gamma_h: the step of the output targets.
        per_step: the readout reads every state (sequence labelling) rather than ``h_T`` only.
        scale: applied to the loss before its backward into the readout (``None``: the identity).

    Returns:
        ``(loss, displacements)``: the detached loss and a ``(batch, T, hidden)`` tensor, zero before ``T``
        unless ``per_step``.
    """
    read = states.detach()
    leaf = (read if per_step else read[:, -1]).clone().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(readout(leaf))
        if loss.ndim != 0:
            raise ValueError(
                f"The loss of the readout's prediction must be a scalar, got shape {tuple(loss.shape)}. "
                "HINT: reduce it (mean or sum) in local_loss / the loss function."
            )
        (grad_state,) = torch.autograd.grad(loss, leaf, retain_graph=True)
        params = [p for p in readout.parameters() if p.requires_grad]
        if params:
            scaled = loss if scale is None else scale(loss)
            torch.autograd.backward(scaled, inputs=params)
    displacement = torch.zeros_like(read)
    if per_step:
        displacement.add_(grad_state, alpha=-gamma_h)
    else:
        displacement[:, -1].add_(grad_state, alpha=-gamma_h)
    return loss.detach(), displacement


def propagate_targets(
    rnn: UnrolledRNN,
    x: Tensor,
    states: Tensor,
    displacements: Tensor,
    factor: Tensor,
    form: Form = "linearized",
    clamp: float = 1e-3,
) -> Tensor:
    """Targets ``v_1..v_T`` of the states, propagated backwards in time from the direct displacements.

    ``v_T = h_T + d_T``; then for ``t = T..2``, ``v_{t-1} = p_t(v_t) + d_{t-1}`` where ``p_t`` is the chosen form
    (see the module documentation) and ``d_t = displacements[:, t-1]`` (``-gamma_h * grad_{h_t} loss`` where the
    readout reads ``h_t``, zero elsewhere).

    Args:
        rnn: the cell.
        x: inputs ``(batch, T, input)``.
        states: ``h_1..h_T``, ``(batch, T, hidden)``.
        displacements: direct displacements ``(batch, T, hidden)``.
        factor: :func:`factorize` of the cell's ``weight_hh`` for this step.
        form: ``"linearized"``, ``"difference"`` or ``"plain"``.
        clamp: ``tanh`` targets are clamped to ``[-1 + clamp, 1 - clamp]`` before ``atanh``.

    Returns:
        The targets, ``(batch, T, hidden)``, detached.
    """
    form = validate_form(form)
    if rnn.cell != "rnn":
        raise TypeError(
            f"propagate_targets inverts a(W h + U x + b) with one factorisation of W_hh, got a {type(rnn).__name__}. "
            "HINT: use propagate_targets_through_jacobians for a GRU (tp_backward picks it by itself)."
        )
    _check_invertible(rnn.nonlinearity)
    with torch.no_grad():
        states = states.detach()
        length = states.shape[1]
        targets = torch.empty_like(states)
        inverse_of_states = regularized_inverse(rnn, states, x, factor, clamp) if form == "difference" else None
        target = states[:, -1] + displacements[:, -1]
        for i in range(length - 1, -1, -1):  # targets[:, i] is v_{i+1}
            targets[:, i] = target
            if i == 0:
                break
            if form == "linearized":
                previous = states[:, i - 1] + inverse_jvp(rnn, states[:, i], target - states[:, i], factor, clamp)
            elif form == "difference":
                assert inverse_of_states is not None
                inverted = regularized_inverse(rnn, target, x[:, i], factor, clamp)
                previous = states[:, i - 1] + inverted - inverse_of_states[:, i]
            else:
                previous = regularized_inverse(rnn, target, x[:, i], factor, clamp)
            target = previous + displacements[:, i - 1]
    return targets


# --------------------------------------------------------------------------- the step
@dataclass
class TPResult:
    """What one target propagation step computed (every tensor detached).

    Attributes:
        loss: the readout's loss on the batch.
        surrogate: ``sum_t 1/2 ||h_t - v_t||^2`` at the targets (summed over the batch).
        residuals: ``mean over the batch of ||v_t - h_t||``, one value per time step, shape ``(T,)``.
        step_losses: ``sum over the batch of 1/2 ||h_t - v_t||^2``, one value per time step, shape ``(T,)``.
        targets: the targets ``v_1..v_T``, shape ``(batch, T, hidden)``.
    """

    loss: Tensor
    surrogate: Tensor
    residuals: Tensor
    step_losses: Tensor
    targets: Tensor


def _recurrent_parameters(rnn: nn.Module) -> list[nn.Parameter]:
    return [p for p in rnn.parameters() if p.requires_grad]


def tp_backward_from_states(
    model: RNNSequenceModel,
    x: Tensor,
    states: Tensor,
    loss_fn: LossOnPrediction,
    *,
    gamma_h: float = 1e-2,
    r: float = 1.0,
    form: Form = "linearized",
    surrogate: Surrogate = "unrolled",
    clamp: float = 1e-3,
    scale: LossScale | None = None,
    h0: Tensor | None = None,
) -> TPResult:
    """One target propagation step on states the model's forward already computed.

    Accumulates into ``.grad``: the readout's parameters get the loss's gradient; the recurrent cell's get the
    gradient of the surrogate ``sum_t 1/2 ||h_t - v_t||^2`` (``"unrolled"``: through ``states``' graph, which
    must then be attached to the cell's parameters; ``"local"``: each step's layer on the detached previous
    state). Everything is passed through ``scale`` first. One Cholesky factorisation of
    ``W^T W + r I`` serves every time step of a tanh RNN; a GRU (linearized form only) factorises
    ``J_t^T J_t + r I`` per sample and time step.

    Args:
        model: the network (``model.rnn``, ``model.readout``, ``model.per_step``).
        x: the cell's inputs, ``(batch, T, input)``.
        states: ``model.rnn(x, h0)``, ``(batch, T, hidden)``.
        loss_fn: ``loss_fn(prediction) -> scalar``, on the readout's prediction.
        gamma_h: the step of the output targets, ``v_T = h_T - gamma_h * grad_{h_T} loss``.
        r: the inverse's regularization (``r = 0`` only with an invertible ``W``).
        form: ``"linearized"``, ``"difference"`` or ``"plain"``.
        surrogate: ``"unrolled"`` or ``"local"``.
        clamp: ``tanh`` targets are clamped to ``[-1 + clamp, 1 - clamp]`` before ``atanh``.
        scale: a linear map applied to every loss before its backward (accumulation, AMP).
        h0: the initial state the forward started from (default zeros).

    Returns:
        The step's :class:`TPResult`.

    Raises:
        ValueError: for a non-invertible cell, bad ``r``, ``form`` or ``surrogate`` (a GRU takes only
            ``"linearized"``), sequences of length 0, or an ``"unrolled"`` surrogate on states without a graph.
    """
    rnn = model.rnn
    form = validate_form(form)
    _check_cell(rnn, form)
    check_sequence(x, rnn.input_size, type(rnn).__name__)
    r = validate_regularization(r, allow_zero=True)
    surrogate = validate_surrogate(surrogate)
    if not 0.0 < clamp < 1.0:
        raise ValueError(f"clamp must be in (0, 1), got {clamp}. HINT: pass clamp=1e-3.")
    if states.shape[:2] != x.shape[:2] or states.shape[-1] != rnn.hidden_size:
        raise ValueError(
            f"states of shape {tuple(states.shape)} do not belong to inputs of shape {tuple(x.shape)} and a cell of "
            f"hidden size {rnn.hidden_size}. HINT: pass states = model.rnn(x)."
        )
    params = _recurrent_parameters(rnn)
    if surrogate == "unrolled" and params and not states.requires_grad:
        raise ValueError(
            "The 'unrolled' surrogate differentiates the states through the unrolled graph, but the states carry "
            "no graph. HINT: compute them with gradients enabled (model.rnn(x)), or use surrogate='local'."
        )
    # Targets are computed in the parameters' precision (the forward may have run under autocast).
    dtype = rnn.weight_hh.dtype
    inputs, values = x.detach().to(dtype), states.detach().to(dtype)
    loss, displacements = output_displacements(
        model.readout, values, loss_fn, gamma_h, per_step=model.per_step, scale=scale
    )
    if rnn.cell == "gru":
        targets = propagate_targets_through_jacobians(rnn, inputs, values, displacements, r)
    else:
        factor = factorize(rnn.weight_hh, r)
        targets = propagate_targets(rnn, inputs, values, displacements, factor, form, clamp)
    with torch.enable_grad():
        # local: every step's layer at once, on the detached previous states
        reached = states if surrogate == "unrolled" else rnn.step(_previous_states(values, h0), inputs)
        gap = reached - targets.to(reached.dtype)
        step_losses = 0.5 * gap.square().sum(dim=(0, 2))
        total = step_losses.sum()
        if params:
            torch.autograd.backward(total if scale is None else scale(total), inputs=params)
    with torch.no_grad():
        residuals = (targets - values).norm(dim=-1).mean(dim=0)
    return TPResult(
        loss=loss,
        surrogate=total.detach(),
        residuals=residuals,
        step_losses=step_losses.detach(),
        targets=targets,
    )


def _previous_states(states: Tensor, h0: Tensor | None) -> Tensor:
    """``h_0..h_{T-1}`` from ``h_1..h_T`` and the initial state."""
    first = torch.zeros_like(states[:, :1]) if h0 is None else h0.detach().reshape(states.shape[0], 1, -1)
    return torch.cat([first.to(states.dtype), states[:, :-1]], dim=1)


def tp_backward(
    model: RNNSequenceModel,
    x: Tensor,
    loss_fn: LossOnPrediction,
    *,
    gamma_h: float = 1e-2,
    r: float = 1.0,
    form: Form = "linearized",
    surrogate: Surrogate = "unrolled",
    clamp: float = 1e-3,
    scale: LossScale | None = None,
) -> TPResult:
    """One target propagation step on a batch: forward, targets, gradients accumulated into ``.grad``.

    The forward keeps its graph only for the ``"unrolled"`` surrogate. See :func:`tp_backward_from_states`
    for the arguments and the module documentation for the method.

    Example::

        model = RNNSequenceModel(input_size=6, hidden_size=100, output_size=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        result = tp_backward(model, x, lambda logits: F.cross_entropy(logits, y), gamma_h=1e-2, r=10.0)
        optimizer.step(); optimizer.zero_grad()
    """
    check_sequence(x, model.rnn.input_size, type(model.rnn).__name__)
    surrogate = validate_surrogate(surrogate)
    with torch.set_grad_enabled(surrogate == "unrolled"):
        states = model.rnn(x)
    return tp_backward_from_states(
        model, x, states, loss_fn, gamma_h=gamma_h, r=r, form=form, surrogate=surrogate, clamp=clamp, scale=scale
    )
