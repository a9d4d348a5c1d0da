"""Target propagation by regularized inversion, pure PyTorch: the inverse, the target forms, the step.

References are independent: ``torch.linalg.solve`` for the closed form, L-BFGS for the argmin, autograd for the
inverse's Jacobian, back-propagation through time for the state and parameter gradients, and per-step
loops written out here for both surrogates.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_mpc import TPRule
from lightning_mpc.rules.tp import (
    RNNSequenceModel,
    UnrolledRNN,
    factorize,
    inverse_jvp,
    regularized_inverse,
    tp_backward,
    tp_backward_from_states,
)

FORMS = ["linearized", "difference", "plain"]
SURROGATES = ["unrolled", "local"]


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _model(nonlinearity: str = "tanh", per_step: bool = False, hidden: int = 6, seed: int = 0) -> RNNSequenceModel:
    torch.manual_seed(seed)
    model = RNNSequenceModel(3, hidden, 4, per_step=per_step, nonlinearity=nonlinearity)  # type: ignore[arg-type]
    with torch.no_grad():  # non-zero biases and a non-orthogonal W_hh, so that nothing is accidentally simple
        model.rnn.bias.normal_(0.0, 0.3)
        model.readout.bias.normal_(0.0, 0.3)
        if nonlinearity == "tanh":
            model.rnn.weight_hh.mul_(0.9).add_(0.2 * torch.randn(hidden, hidden))
    return model


def _batch(batch: int = 5, length: int = 7, per_step: bool = False, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, 3, generator=g)
    y = torch.randint(0, 4, (batch, length) if per_step else (batch,), generator=g)
    return x, y


def _loss(y: Tensor):
    def loss_fn(prediction: Tensor) -> Tensor:
        if prediction.ndim == 3:
            return F.cross_entropy(prediction.flatten(0, 1), y.flatten())
        return F.cross_entropy(prediction, y)

    return loss_fn


def _closed_form(rnn: UnrolledRNN, v: Tensor, x_t: Tensor, r: float, clamp: float = 1e-3) -> Tensor:
    w = rnn.weight_hh.detach()
    z = v if rnn.nonlinearity == "identity" else torch.atanh(v.clamp(-1 + clamp, 1 - clamp))
    z = z - x_t @ rnn.weight_ih.detach().T - rnn.bias.detach()
    gram = w.T @ w + r * torch.eye(w.shape[0])
    return torch.linalg.solve(gram, (z @ w).T).T


def _grads(model: torch.nn.Module) -> dict[str, Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------- the inverse
@pytest.mark.parametrize("nonlinearity", ["tanh", "identity"])
@pytest.mark.parametrize("r", [0.5, 10.0])
def test_inverse_equals_the_closed_form(nonlinearity: str, r: float) -> None:
    rnn = _model(nonlinearity).rnn
    v = 0.9 * torch.tanh(torch.randn(5, 6))
    x_t = torch.randn(5, 3)
    got = regularized_inverse(rnn, v, x_t, factorize(rnn.weight_hh, r))
    torch.testing.assert_close(got, _closed_form(rnn, v, x_t, r), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("nonlinearity", ["tanh", "identity"])
def test_inverse_is_the_numerical_argmin(nonlinearity: str) -> None:
    rnn, r = _model(nonlinearity).rnn, 2.0
    v = 0.9 * torch.tanh(torch.randn(4, 6))
    x_t = torch.randn(4, 3)
    z = (v if nonlinearity == "identity" else torch.atanh(v)) - x_t @ rnn.weight_ih.detach().T - rnn.bias.detach()

    def objective(h: Tensor) -> Tensor:
        return (h @ rnn.weight_hh.detach().T - z).square().sum() + r * h.square().sum()

    h = torch.zeros(4, 6, requires_grad=True)
    optimizer = torch.optim.LBFGS([h], lr=1.0, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = objective(h)
        value.backward()
        return value

    optimizer.step(closure)
    got = regularized_inverse(rnn, v, x_t, factorize(rnn.weight_hh, r))
    torch.testing.assert_close(got, h.detach(), rtol=1e-7, atol=1e-8)
    for _ in range(5):  # a strict minimum: every perturbation costs more
        assert objective(got + 1e-3 * torch.randn(4, 6)) > objective(got)


def test_exact_inverse_recovers_the_previous_state() -> None:
    model = _model("tanh")
    with torch.no_grad():
        model.rnn.weight_hh.copy_(torch.linalg.qr(torch.randn(6, 6))[0])  # invertible, so r = 0 is allowed
    x, _ = _batch()
    states = model.rnn(x).detach()
    factor = factorize(model.rnn.weight_hh, 0.0)
    for t in range(1, x.shape[1]):
        previous = regularized_inverse(model.rnn, states[:, t], x[:, t], factor)
        torch.testing.assert_close(previous, states[:, t - 1], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("nonlinearity", ["tanh", "identity"])
def test_linearized_step_is_the_jacobian_of_the_inverse(nonlinearity: str) -> None:
    rnn, r = _model(nonlinearity).rnn, 3.0
    h_t = 0.8 * torch.tanh(torch.randn(5, 6))
    x_t = torch.randn(5, 3)
    direction = torch.randn(5, 6)
    _, expected = torch.autograd.functional.jvp(lambda v: _closed_form(rnn, v, x_t, r), h_t, direction)
    got = inverse_jvp(rnn, h_t, direction, factorize(rnn.weight_hh, r))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------- targets against BPTT
def _orthogonal_linear(per_step: bool) -> RNNSequenceModel:
    model = _model("identity", per_step=per_step)
    with torch.no_grad():
        model.rnn.weight_hh.copy_(torch.linalg.qr(torch.randn(6, 6))[0])
    return model


def _bptt(model: RNNSequenceModel, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Back-propagation through time: the state gradients ``grad_{h_t} loss`` and the parameter gradients."""
    model.zero_grad()
    h = torch.zeros(x.shape[0], model.rnn.hidden_size)
    steps = []
    for t in range(x.shape[1]):  # every h_t its own graph node, so that h_t.grad is the total derivative
        h = model.rnn.step(h, x[:, t])
        h.retain_grad()
        steps.append(h)
    states = torch.stack(steps, dim=1)
    _loss(y)(model.readout(states if model.per_step else states[:, -1])).backward()
    grads = _grads(model)
    model.zero_grad()
    return torch.stack([step.grad for step in steps], dim=1).detach(), grads  # type: ignore[misc]


@pytest.mark.parametrize("per_step", [False, True], ids=["last-state", "per-step"])
@pytest.mark.parametrize("form", FORMS)
def test_linear_orthogonal_rnn_displacement_is_minus_gamma_times_bptt_state_gradient(per_step: bool, form: str) -> None:
    model, gamma_h = _orthogonal_linear(per_step), 0.05
    x, y = _batch(per_step=per_step)
    state_grads, _ = _bptt(model, x, y)
    states = model.rnn(x).detach()
    result = tp_backward(model, x, _loss(y), gamma_h=gamma_h, r=0.0, form=form)  # type: ignore[arg-type]
    displacement = result.targets - states
    assert displacement.abs().amax(dim=(0, 2)).min() > 1e-4  # every step has a target of its own
    torch.testing.assert_close(displacement, -gamma_h * state_grads, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("per_step", [False, True], ids=["last-state", "per-step"])
def test_linear_orthogonal_rnn_local_surrogate_gradient_is_gamma_times_bptt(per_step: bool) -> None:
    model, gamma_h = _orthogonal_linear(per_step), 0.05
    x, y = _batch(per_step=per_step)
    _, bptt = _bptt(model, x, y)
    tp_backward(model, x, _loss(y), gamma_h=gamma_h, r=0.0, surrogate="local")
    got = _grads(model)
    assert set(got) == set(bptt) == {name for name, _ in model.named_parameters()}
    for name, grad in bptt.items():
        expected = grad if name.startswith("readout.") else gamma_h * grad
        torch.testing.assert_close(got[name], expected, rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.parametrize("form", FORMS)
def test_difference_and_plain_forms_follow_their_definitions(form: str) -> None:
    model, r, gamma_h = _model("tanh"), 2.0, 0.3
    x, y = _batch()
    result = tp_backward(model, x, _loss(y), gamma_h=gamma_h, r=r, form=form)  # type: ignore[arg-type]
    states = model.rnn(x).detach()
    expected = states.clone()
    state_grads, _ = _bptt(model, x, y)
    target = states[:, -1] - gamma_h * state_grads[:, -1]
    expected[:, -1] = target
    for t in range(x.shape[1] - 1, 0, -1):  # target[:, t] is v_{t+1}; step t + 1 reads x[:, t]
        if form == "plain":
            target = _closed_form(model.rnn, target, x[:, t], r)
        elif form == "difference":
            target = states[:, t - 1] + _closed_form(model.rnn, target, x[:, t], r) - _closed_form(
                model.rnn, states[:, t], x[:, t], r
            )
        else:
            slope = 1.0 / (1.0 - states[:, t].clamp(-1 + 1e-3, 1 - 1e-3).square())
            w = model.rnn.weight_hh.detach()
            step = torch.linalg.solve(w.T @ w + r * torch.eye(6), (((target - states[:, t]) * slope) @ w).T).T
            target = states[:, t - 1] + step
        expected[:, t - 1] = target
    torch.testing.assert_close(result.targets, expected, rtol=1e-9, atol=1e-12)


def test_difference_form_agrees_with_linearized_to_first_order() -> None:
    model = _model("tanh")
    x, y = _batch()
    gaps = []
    for gamma_h in (1e-4, 1e-5):
        states = model.rnn(x).detach()
        linear = tp_backward(model, x, _loss(y), gamma_h=gamma_h, r=1.0, form="linearized").targets - states
        difference = tp_backward(model, x, _loss(y), gamma_h=gamma_h, r=1.0, form="difference").targets - states
        gaps.append(float((linear - difference).norm() / linear.norm()))
    assert gaps[1] < 0.2 * gaps[0]  # the relative gap shrinks with gamma_h (it is O(gamma_h))
    assert gaps[1] < 1e-2


# --------------------------------------------------------------------------- the parameter step
def _per_step_local_reference(model: RNNSequenceModel, x: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """sum_t 1/2 ||f_t(h_{t-1}) - v_t||^2 with every h_{t-1} a constant, one step at a time."""
    rnn = model.rnn
    with torch.no_grad():
        states = rnn(x)
    h = torch.zeros(x.shape[0], rnn.hidden_size)
    total = torch.zeros(())
    for t in range(x.shape[1]):
        total = total + 0.5 * (rnn.step(h, x[:, t]) - targets[:, t]).square().sum()
        h = states[:, t]
    params = [p for _, p in rnn.named_parameters()]
    return {f"rnn.{name}": g for (name, _), g in zip(rnn.named_parameters(), torch.autograd.grad(total, params))}


def _unrolled_reference(model: RNNSequenceModel, x: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """sum_t 1/2 ||h_t - v_t||^2 differentiated through a fresh unrolled forward."""
    rnn = model.rnn
    total = 0.5 * (rnn(x) - targets).square().sum()
    params = [p for _, p in rnn.named_parameters()]
    return {f"rnn.{name}": g for (name, _), g in zip(rnn.named_parameters(), torch.autograd.grad(total, params))}


@pytest.mark.parametrize("per_step", [False, True], ids=["last-state", "per-step"])
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("form", FORMS)
def test_step_gradients_match_the_references(form: str, surrogate: str, per_step: bool) -> None:
    model = _model("tanh", per_step=per_step)
    x, y = _batch(per_step=per_step)
    _, bptt = _bptt(model, x, y)
    settings = {"gamma_h": 0.2, "r": 1.5, "form": form, "surrogate": surrogate}
    result = tp_backward(model, x, _loss(y), **settings)  # type: ignore[arg-type]
    got = _grads(model)
    reference_of = _unrolled_reference if surrogate == "unrolled" else _per_step_local_reference
    reference = reference_of(model, x, result.targets)
    assert set(got) == {name for name, _ in model.named_parameters()}  # every parameter learns
    for name, grad in reference.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-10, atol=1e-13, msg=name)
        assert grad.abs().sum() > 0, name
    for name in ("readout.weight", "readout.bias"):  # the readout learns from the loss itself
        torch.testing.assert_close(got[name], bptt[name], rtol=1e-12, atol=1e-14, msg=name)
    states = model.rnn(x).detach()
    step_losses = 0.5 * (states - result.targets).square().sum(dim=(0, 2))
    torch.testing.assert_close(result.step_losses, step_losses)
    torch.testing.assert_close(result.surrogate, step_losses.sum())
    torch.testing.assert_close(result.residuals, (result.targets - states).norm(dim=-1).mean(dim=0))
    torch.testing.assert_close(result.loss, _loss(y)(model(x)))


def test_gradients_accumulate_and_pass_through_scale() -> None:
    model = _model("tanh")
    x, y = _batch()
    tp_backward(model, x, _loss(y), gamma_h=0.1, r=1.0)
    once = _grads(model)
    tp_backward(model, x, _loss(y), gamma_h=0.1, r=1.0, scale=lambda value: 0.25 * value)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, 1.25 * once[name], msg=name)


def test_states_from_the_models_forward_give_the_same_step() -> None:
    model, twin = _model("tanh"), _model("tanh")
    x, y = _batch()
    tp_backward(model, x, _loss(y), gamma_h=0.1, r=1.0)
    tp_backward_from_states(twin, x, twin.rnn(x), _loss(y), gamma_h=0.1, r=1.0)
    for (name, grad), other in zip(_grads(model).items(), _grads(twin).values()):
        torch.testing.assert_close(grad, other, msg=name)


# --------------------------------------------------------------------------- cost
@pytest.mark.parametrize("form", FORMS)
def test_one_factorisation_per_training_step(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"cholesky": 0, "solve": 0}
    cholesky, solve = torch.linalg.cholesky_ex, torch.cholesky_solve

    def counting_cholesky(*args, **kwargs):
        calls["cholesky"] += 1
        return cholesky(*args, **kwargs)

    def counting_solve(*args, **kwargs):
        calls["solve"] += 1
        return solve(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", counting_cholesky)
    monkeypatch.setattr(torch, "cholesky_solve", counting_solve)
    model = _model("tanh")
    length = 9
    x, y = _batch(length=length)
    tp_backward(model, x, _loss(y), gamma_h=0.1, r=1.0, form=form)  # type: ignore[arg-type]
    assert calls["cholesky"] == 1
    # one solve per time step (T - 1 steps back from v_T); the difference form adds one batched solve for g_t(h_t)
    assert calls["solve"] == (length - 1) + (1 if form == "difference" else 0)


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_a_hint() -> None:
    model = _model("tanh")
    x, y = _batch()
    with pytest.raises(ValueError, match="r must be > 0.*HINT"):
        tp_backward(model, x, _loss(y), r=-1.0)
    with pytest.raises(ValueError, match="length 0.*HINT"):
        tp_backward(model, x[:, :0], _loss(y))
    with pytest.raises(ValueError, match="length 0.*HINT"):
        model(x[:, :0])
    with pytest.raises(ValueError, match="features per step.*HINT"):
        model(x[..., :2])
    with pytest.raises(ValueError, match="form.*HINT"):
        tp_backward(model, x, _loss(y), form="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="surrogate.*HINT"):
        tp_backward(model, x, _loss(y), surrogate="global")  # type: ignore[arg-type]
    with torch.no_grad():
        states = model.rnn(x)
    with pytest.raises(ValueError, match="no graph.*HINT"):
        tp_backward_from_states(model, x, states, _loss(y), surrogate="unrolled")
    with pytest.raises(ValueError, match="not invertible.*HINT"):
        tp_backward(_model("relu"), x, _loss(y))
    singular = _model("tanh")
    with torch.no_grad():
        singular.rnn.weight_hh[0].zero_()
    with pytest.raises(ValueError, match="not positive definite.*singular.*HINT"):
        tp_backward(singular, x, _loss(y), r=0.0)
    tp_backward(singular, x, _loss(y), r=1.0)  # the regularized inverse exists for every W_hh


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0.0}, "r must be > 0"),
        ({"r": -1.0}, "r must be > 0"),
        ({"gamma_h": 0.0}, "gamma_h"),
        ({"form": "exact"}, "form"),
        ({"surrogate": "global"}, "surrogate"),
        ({"clamp": 1.0}, "clamp"),
        ({"telemetry_segments": 0}, "telemetry_segments"),
    ],
)
def test_rule_refuses_bad_arguments_with_a_hint(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        TPRule(**kwargs)
    assert "HINT" in str(info.value)


def test_modules_refuse_bad_sizes_and_choices() -> None:
    for kwargs in ({"input_size": 0, "hidden_size": 4}, {"input_size": 3, "hidden_size": 4, "nonlinearity": "gelu"}):
        with pytest.raises(ValueError, match="HINT"):
            UnrolledRNN(**kwargs)  # type: ignore[arg-type]
    rnn = UnrolledRNN(3, 5)
    assert torch.allclose(rnn.weight_hh @ rnn.weight_hh.T, torch.eye(5))  # the paper's orthogonal start
    assert not rnn.bias.any()


def test_unrolled_rnn_is_the_elman_recurrence() -> None:
    rnn = _model("tanh").rnn
    fused = torch.nn.RNN(3, 6, batch_first=True)
    with torch.no_grad():
        fused.weight_ih_l0.copy_(rnn.weight_ih)
        fused.weight_hh_l0.copy_(rnn.weight_hh)
        fused.bias_ih_l0.copy_(rnn.bias)
        fused.bias_hh_l0.zero_()
    x, _ = _batch()
    h0 = torch.randn(5, 6)
    torch.testing.assert_close(rnn(x, h0), fused(x, h0.unsqueeze(0))[0])


def test_a_given_initial_state_is_the_first_layers_input() -> None:
    model, twin = _model("tanh"), _model("tanh")
    x, y = _batch()
    h0 = 0.5 * torch.tanh(torch.randn(5, 6))
    states = model.rnn(x, h0)
    result = tp_backward_from_states(model, x, states, _loss(y), gamma_h=0.2, r=1.0, surrogate="local", h0=h0)
    rnn = twin.rnn
    previous = torch.cat([h0.unsqueeze(1), rnn(x, h0).detach()[:, :-1]], dim=1)
    total = 0.5 * (torch.stack([rnn.step(previous[:, t], x[:, t]) for t in range(7)], 1) - result.targets).square().sum()
    for (name, p), expected in zip(rnn.named_parameters(), torch.autograd.grad(total, list(rnn.parameters()))):
        torch.testing.assert_close(dict(model.rnn.named_parameters())[name].grad, expected, msg=name)
