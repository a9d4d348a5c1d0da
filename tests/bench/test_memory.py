"""Real memory of a benchmark step: gradients prepared beforehand, the window model's prediction, the depth fit."""

from __future__ import annotations

import pytest
import torch

from lightning_mpc.bench import (
    StepConfig,
    backprop_step,
    fit_bytes_per_block,
    make_workload,
    prepare_gradients,
    saved_tensor_peak,
    step_peak,
    window_model,
)
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.realmem import measure_peak


def test_prepare_gradients_allocates_once_then_zeroes_in_place() -> None:
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    prepare_gradients(params)
    grads = [p.grad for p in params]
    assert all(g is not None and not g.any() for g in grads)
    params[0].grad += 5  # type: ignore[operator]
    prepare_gradients(params)
    assert [p.grad for p in params] == grads and not params[0].grad.any()  # type: ignore[union-attr]


def test_a_step_does_not_pay_for_allocating_gradients() -> None:
    """Without .grad the step allocates and keeps every gradient; once prepared it keeps nothing."""
    w = make_workload("mlp-2", batch=4)
    params = w.parameters()
    step = backprop_step(w)
    grad_bytes = sum(p.numel() * p.element_size() for b in w.blocks for p in b.parameters())
    with preserved_buffers(w.modules()):
        for p in params:
            p.grad = None
        _, cold = measure_peak(step)
        prepared = step_peak(step, params, "cpu")
    assert cold.end_bytes >= grad_bytes  # the unprepared step allocated every gradient and kept it
    assert 0 < prepared.peak_bytes and prepared.end_bytes < grad_bytes / 100


def test_window_model_predicts_backprop_and_skips_checkpointing() -> None:
    w = make_workload("mlp-3", batch=64)
    with preserved_buffers(w.modules()):
        model = window_model(w)
        real = step_peak(backprop_step(w), w.parameters(), "cpu").peak_bytes
        saved = saved_tensor_peak(backprop_step(w), w.parameters())
    predicted = model.predict(StepConfig("bp", "bp", backprop_step(w)))
    assert predicted is not None and 0.8 * real <= predicted <= 1.25 * real
    assert 0 < saved < real  # the saved tensors are one part of the real peak
    assert model.predict(StepConfig("ckpt", "checkpoint", backprop_step(w), segment=1)) is None
    assert model.predict(
        StepConfig("h1", "mpc", backprop_step(w), horizon=1, mode="sliding")
    ) == model.local.predict_peak(1)


def test_bytes_per_block_is_the_slope_of_a_least_squares_line() -> None:
    fit = fit_bytes_per_block([8, 16, 32], [100 + 8 * 10, 100 + 16 * 10, 100 + 32 * 10])
    assert fit.slope == pytest.approx(10) and fit.intercept == pytest.approx(100)
    assert fit_bytes_per_block([2, 4], [5, 5]).slope == pytest.approx(0)
    with pytest.raises(ValueError, match="two or more depths.*HINT"):
        fit_bytes_per_block([8, 8], [1, 2])
