"""Target propagation through an unrolled GRU: the cell, its Jacobian, the linearized targets, the step.

References are independent: ``nn.GRU`` for the cell, ``torch.func.jacrev`` for the step Jacobian, a dense
per-sample ``torch.linalg.pinv`` / ``torch.linalg.solve`` of autograd Jacobians for the targets, the tanh RNN's
own ``inverse_jvp`` for the relation between the two linearized forms, and fresh forwards for the surrogates.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_mpc import RuleStrategy, TPRule
from lightning_mpc.data import temporal_order
from lightning_mpc.recipes import RecurrentTask
from lightning_mpc.rules.tp import (
    RNNSequenceModel,
    UnrolledGRU,
    factorize,
    find_sequence_model,
    inverse_jvp,
    linearized_inverse_step,
    propagate_targets,
    tp_backward,
    tp_backward_from_states,
)
from tests.lightning.helpers import trainer
from tests.rules.test_tp import _batch, _grads, _loss, _model, _per_step_local_reference, _unrolled_reference


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _gru_model(per_step: bool = False, hidden: int = 6, seed: int = 0) -> RNNSequenceModel:
    torch.manual_seed(seed)
    model = RNNSequenceModel(3, hidden, 4, per_step=per_step, cell="gru")
    with torch.no_grad():  # non-zero biases and non-orthogonal blocks, so that nothing is accidentally simple
        for param in model.rnn.parameters():
            param.add_(0.3 * torch.randn_like(param))
        model.readout.bias.normal_(0.0, 0.3)
    return model


def _dense_jacobians(rnn: UnrolledGRU, h: Tensor, x_t: Tensor) -> Tensor:
    """``d step / d h`` per sample, one autograd Jacobian at a time (no vmap, no analytic formula)."""
    return torch.stack(
        [torch.autograd.functional.jacobian(lambda s, x_k=x_k: rnn.step(s, x_k), h_k) for h_k, x_k in zip(h, x_t)]
    ).detach()


# --------------------------------------------------------------------------- the cell
@pytest.mark.parametrize("init", ["orthogonal", "uniform"])
def test_unrolled_gru_is_nn_gru(init: str) -> None:
    torch.manual_seed(0)
    gru = UnrolledGRU(3, 6, init=init)  # type: ignore[arg-type]
    with torch.no_grad():
        for param in gru.parameters():
            param.add_(0.3 * torch.randn_like(param))
    fused = torch.nn.GRU(3, 6, batch_first=True)
    with torch.no_grad():  # the same layout and the same two biases: a plain copy
        for name, param in gru.named_parameters():
            getattr(fused, f"{name}_l0").copy_(param)
    x, _ = _batch()
    h0 = torch.randn(5, 6)
    torch.testing.assert_close(gru(x, h0), fused(x, h0.unsqueeze(0))[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gru(x), fused(x)[0], rtol=1e-12, atol=1e-14)
    states = gru(x, h0)
    torch.testing.assert_close(gru.step(h0, x[:, 0]), states[:, 0])  # step is one time step of the forward
    torch.testing.assert_close(gru.step(states[:, 2], x[:, 3]), states[:, 3])


def test_orthogonal_gru_start_and_bad_arguments() -> None:
    gru = UnrolledGRU(3, 5)
    for block in gru.weight_hh.detach().chunk(3):
        torch.testing.assert_close(block @ block.T, torch.eye(5))
    assert not gru.bias_ih.any() and not gru.bias_hh.any()
    with pytest.raises(ValueError, match="HINT"):
        UnrolledGRU(0, 5)
    with pytest.raises(ValueError, match="init.*HINT"):
        UnrolledGRU(3, 5, init="xavier")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cell.*HINT"):
        RNNSequenceModel(3, 5, 2, cell="lstm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="GRU.*nonlinearity.*HINT"):
        RNNSequenceModel(3, 5, 2, cell="gru", nonlinearity="identity")


def test_step_jacobian_is_autograds() -> None:
    rnn = _gru_model().rnn
    h, x_t = 0.8 * torch.tanh(torch.randn(5, 6)), torch.randn(5, 3)
    expected = torch.func.vmap(torch.func.jacrev(rnn.step))(h, x_t).detach()
    got = rnn.step_jacobian(h, x_t)
    assert got.shape == (5, 6, 6) and not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, _dense_jacobians(rnn, h, x_t), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- the linearized step
def test_linearized_inverse_step_is_the_regularized_least_squares_solution() -> None:
    jacobian, direction, r = torch.randn(4, 6, 6), torch.randn(4, 6), 0.7
    got = linearized_inverse_step(jacobian, direction, r)
    for k in range(4):
        gram = jacobian[k].T @ jacobian[k] + r * torch.eye(6)
        torch.testing.assert_close(got[k], torch.linalg.solve(gram, jacobian[k].T @ direction[k]))
        torch.testing.assert_close(
            linearized_inverse_step(jacobian, direction, 0.0)[k], torch.linalg.pinv(jacobian[k]) @ direction[k]
        )


def test_rnn_linearized_form_is_the_same_step_in_pre_activation_coordinates() -> None:
    """The tanh RNN's inverse_jvp is (W^T W + r I)^{-1} W^T D^{-1} delta: the Jacobian step with J -> W, delta ->
    D^{-1} delta (D = diag(1 - h_t^2)) for every r; with the state-space Jacobian J = D W it agrees at r = 0 only."""
    rnn = _model("tanh").rnn
    h_t, direction = 0.8 * torch.tanh(torch.randn(5, 6)), torch.randn(5, 6)
    weight = rnn.weight_hh.detach().expand(5, 6, 6)
    slope = 1.0 - h_t.square()
    state_jacobian = slope.unsqueeze(-1) * weight  # d h_t / d h_{t-1} = D W
    for r in (0.5, 10.0):
        existing = inverse_jvp(rnn, h_t, direction, factorize(rnn.weight_hh, r))
        torch.testing.assert_close(linearized_inverse_step(weight, direction / slope, r), existing)
        gap = linearized_inverse_step(state_jacobian, direction, r) - existing
        assert gap.norm() > 1e-3 * existing.norm()  # r regularizes pre-activations there, states here
    existing = inverse_jvp(rnn, h_t, direction, factorize(rnn.weight_hh, 0.0))
    torch.testing.assert_close(linearized_inverse_step(state_jacobian, direction, 0.0), existing)


def _dense_targets(model: RNNSequenceModel, x: Tensor, y: Tensor, gamma_h: float, r: float) -> Tensor:
    """v_T = h_T - gamma_h grad loss, then v_{t-1} = h_{t-1} + J_t^+ (v_t - h_t) (+ direct terms), per sample with
    dense autograd Jacobians and pinv (r = 0) or solve (r > 0)."""
    rnn = model.rnn
    states = rnn(x).detach().requires_grad_(True)
    read = states if model.per_step else states[:, -1]
    (grads,) = torch.autograd.grad(_loss(y)(model.readout(read)), states)
    direct = -gamma_h * grads.detach()
    states = states.detach()
    targets = states.clone()
    target = states[:, -1] + direct[:, -1]
    targets[:, -1] = target
    for t in range(x.shape[1] - 1, 0, -1):
        jacobians = _dense_jacobians(rnn, states[:, t - 1], x[:, t])
        if r == 0:
            inverse = torch.linalg.pinv(jacobians)
        else:
            inverse = torch.linalg.solve(jacobians.mT @ jacobians + r * torch.eye(6), jacobians.mT)
        target = states[:, t - 1] + (inverse @ (target - states[:, t]).unsqueeze(-1)).squeeze(-1) + direct[:, t - 1]
        targets[:, t - 1] = target
    return targets


@pytest.mark.parametrize("per_step", [False, True], ids=["last-state", "per-step"])
@pytest.mark.parametrize("r", [0.0, 0.5])
def test_gru_targets_are_the_dense_regularized_pseudo_inverse_propagation(per_step: bool, r: float) -> None:
    model, gamma_h = _gru_model(per_step), 1e-3
    x, y = _batch(per_step=per_step)
    states = model.rnn(x).detach()
    result = tp_backward(model, x, _loss(y), gamma_h=gamma_h, r=r)
    expected = _dense_targets(model, x, y, gamma_h, r)
    displacement = result.targets - states
    assert displacement.abs().amax(dim=(0, 2)).min() > 1e-7  # every step has a target of its own
    torch.testing.assert_close(displacement, expected - states, rtol=1e-8, atol=1e-13)


# --------------------------------------------------------------------------- the parameter step
@pytest.mark.parametrize("per_step", [False, True], ids=["last-state", "per-step"])
@pytest.mark.parametrize("surrogate", ["unrolled", "local"])
def test_every_gru_parameter_gets_the_surrogates_gradient(surrogate: str, per_step: bool) -> None:
    model = _gru_model(per_step)
    x, y = _batch(per_step=per_step)
    result = tp_backward(model, x, _loss(y), gamma_h=0.2, r=1.5, surrogate=surrogate)  # type: ignore[arg-type]
    got = _grads(model)
    assert set(got) == {name for name, _ in model.named_parameters()}
    reference_of = _unrolled_reference if surrogate == "unrolled" else _per_step_local_reference
    for name, grad in reference_of(model, x, result.targets).items():
        assert torch.isfinite(got[name]).all() and got[name].abs().sum() > 0, name
        torch.testing.assert_close(got[name], grad, rtol=1e-10, atol=1e-13, msg=name)
    twin = _gru_model(per_step)
    tp_backward_from_states(twin, x, twin.rnn(x), _loss(y), gamma_h=0.2, r=1.5, surrogate=surrogate)  # type: ignore[arg-type]
    for name, grad in _grads(twin).items():
        torch.testing.assert_close(grad, got[name], msg=name)


def test_one_batched_factorisation_per_time_step(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes: list[tuple[int, ...]] = []
    cholesky = torch.linalg.cholesky_ex

    def recording_cholesky(matrix: Tensor, *args, **kwargs):
        shapes.append(tuple(matrix.shape))
        return cholesky(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", recording_cholesky)
    length = 9
    x, y = _batch(length=length)
    tp_backward(_gru_model(), x, _loss(y), gamma_h=0.1, r=1.0)
    assert shapes == [(5, 6, 6)] * (length - 1)  # N matrices d x d per step, T - 1 steps


# --------------------------------------------------------------------------- bad input
def test_gru_bad_input_is_refused_with_a_hint() -> None:
    model = _gru_model()
    x, y = _batch()
    for form in ("difference", "plain"):
        with pytest.raises(ValueError, match='GRU.*HINT: use form="linearized"$'):
            tp_backward(model, x, _loss(y), form=form)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="r must be > 0.*HINT"):
        tp_backward(model, x, _loss(y), r=-1.0)
    with pytest.raises(ValueError, match="length 0.*HINT"):
        tp_backward(model, x[:, :0], _loss(y))
    with pytest.raises(ValueError, match="length 0.*HINT"):
        model(x[:, :0])
    with pytest.raises(TypeError, match="UnrolledGRU.*HINT"):
        propagate_targets(model.rnn, x, model.rnn(x).detach(), torch.zeros(5, 7, 6), torch.eye(6))  # type: ignore[arg-type]
    frozen = _gru_model()
    with torch.no_grad():  # W_hh = 0 and z -> 0: every step Jacobian is 0, singular at r = 0
        frozen.rnn.weight_hh.zero_()
        frozen.rnn.bias_ih[6:12].fill_(-1e3)
    with pytest.raises(ValueError, match="not positive definite.*HINT"):
        tp_backward(frozen, x, _loss(y), r=0.0)
    tp_backward(frozen, x, _loss(y), r=1.0)  # the regularized step exists for every Jacobian
    holder = torch.nn.Module()
    holder.cell = UnrolledGRU(3, 4)
    with pytest.raises(ValueError, match="UnrolledGRU outside.*HINT"):
        find_sequence_model(holder)


def test_the_rule_refuses_other_forms_for_a_gru_before_training() -> None:
    torch.manual_seed(0)
    module = RecurrentTask(input_size=3, hidden_size=8, output_size=3, cell="gru")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(8, 5, 3, generator=g), torch.randint(0, 3, (8,), generator=g)))
    t = trainer(strategy=RuleStrategy(rule=TPRule(form="difference"), telemetry=False), max_steps=1)
    with pytest.raises(ValueError, match='GRU.*HINT: use form="linearized"$'):
        t.fit(module, data)
    assert t.global_step == 0
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


# --------------------------------------------------------------------------- Lightning
def test_a_gru_learns_temporal_order_with_strategy_tp() -> None:
    torch.set_default_dtype(torch.float32)  # restored by the fixture
    x, y = temporal_order(3000, 10, generator=torch.Generator().manual_seed(0))
    x_eval, y_eval = temporal_order(500, 10, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    module = RecurrentTask(input_size=6, hidden_size=32, output_size=4, lr=0.5, cell="gru")

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            logits = module(x_eval)
        return float(F.cross_entropy(logits, y_eval)), float((logits.argmax(-1) == y_eval).float().mean())

    loss_before, before = evaluate()
    loader = DataLoader(TensorDataset(x, y), batch_size=20, shuffle=False)
    t = trainer(strategy=RuleStrategy(rule=TPRule(gamma_h=0.1, r=1.0), telemetry=False), max_steps=150)
    t.fit(module, loader)
    loss_after, after = evaluate()
    assert t.global_step == 150
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    assert before < 0.4 and after > 0.9, (before, after)
