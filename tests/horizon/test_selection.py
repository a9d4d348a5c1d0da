"""select_horizon against independent measurements: alignment, memory, and what each objective picks."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lightning_mpc
from lightning_mpc import RealMemoryMeter, horizon_backward, select_horizon
from lightning_mpc.horizon import HorizonReport, choose_horizon, default_probes, validate_objective
from lightning_mpc.horizon.laws import fit_alignment_law, fit_memory_law
from lightning_mpc.horizon.selection import Objective
from tests.models import Case, cnn_bn, mlp, to_double
from tests.reference import reference_gradients


def _case(name: str, seed: int = 0) -> Case:
    torch.manual_seed(seed)
    return to_double(mlp(depth=7, batch=16) if name == "mlp" else cnn_bn(batch=6))


def _batches(case: Case, count: int, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    _, _, _, x, y = case
    g = torch.Generator().manual_seed(seed)
    out = [(x, y)]
    for _ in range(count - 1):
        perm = torch.randperm(x.shape[0], generator=g)
        out.append((x[perm] + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype), y[perm]))
    return out


def _reference_alignment(case: Case, batches: list[tuple[Tensor, Tensor]], horizon: int) -> float:
    """cos^2 from the naive reference (one full graph, autograd.grad per block), mean over batches."""
    _, blocks, heads, _, _ = case
    params = [p for b in blocks for p in b.parameters() if p.requires_grad]
    T = len(blocks)
    values = []
    for x, y in batches:
        mpc, _ = reference_gradients(blocks, list(heads), x, y, F.cross_entropy, horizon, "sliding")
        bp, _ = reference_gradients(blocks, list(heads), x, y, F.cross_entropy, T, "sliding")
        u = torch.cat([mpc[id(p)].reshape(-1) for p in params])
        v = torch.cat([bp[id(p)].reshape(-1) for p in params])
        values.append(float(torch.dot(u, v) ** 2 / (torch.dot(u, u) * torch.dot(v, v))))
    return sum(values) / len(values)


def _direct_peak(case: Case, batches: list[tuple[Tensor, Tensor]], horizon: int) -> int:
    """Real peak of a plain horizon_backward starting without .grad (as after zero_grad), largest over the batches."""
    model, blocks, heads, _, _ = case
    peaks = []
    state = [b.clone() for b in model.buffers()]
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        heads.zero_grad(set_to_none=True)
        with RealMemoryMeter() as meter:
            horizon_backward(blocks, list(heads), x, y, F.cross_entropy, horizon)
        peaks.append(meter.peak_bytes)
    model.zero_grad(set_to_none=True)
    heads.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), state):
            buffer.copy_(value)
    return max(peaks)


@pytest.fixture(scope="module", params=["mlp", "cnn_bn"])
def exhaustive(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every horizon probed, with the independent truth for each."""
    case = _case(request.param)
    T = len(case[1])
    batches = _batches(case, 3)
    truth_a = {h: _reference_alignment(case, batches, h) for h in range(1, T + 1)}
    truth_m = {h: _direct_peak(case, batches, h) for h in range(1, T + 1)}
    return {"case": case, "T": T, "batches": batches, "alignment": truth_a, "memory": truth_m}


def _select(ex: dict[str, Any], **objective: Any) -> HorizonReport:
    _, blocks, heads, _, _ = ex["case"]
    return select_horizon(
        blocks, list(heads), ex["batches"], F.cross_entropy, probes=range(1, ex["T"] + 1), **objective
    )


def test_measured_alignment_and_memory_equal_independent_computations(exhaustive: dict[str, Any]) -> None:
    report = _select(exhaustive, memory_weight=0.0)
    T = exhaustive["T"]
    assert sorted(report.alignment) == list(range(1, T + 1))
    for h in range(1, T + 1):
        assert report.alignment[h] == pytest.approx(exhaustive["alignment"][h], abs=1e-5), h
        assert report.memory[h] == pytest.approx(exhaustive["memory"][h], rel=0.02), h
    assert report.alignment[T] == 1.0
    assert report.alignment[1] < 0.99  # the case is not trivial: local learning is not back-propagation
    assert report.num_batches == 3 and report.mode == "sliding"


def _brute_force(kind: str, value: float, A: dict[int, float], M: dict[int, int]) -> int:
    hs = sorted(A)
    if kind == "memory_budget":
        return max((h for h in hs if M[h] <= value), key=lambda h: (A[h], -M[h], -h))
    if kind == "min_alignment":
        return min((h for h in hs if A[h] >= value), key=lambda h: (M[h], -A[h], h))
    return min(hs, key=lambda h: (value * M[h] - A[h], M[h], h))


def _objective_values(A: dict[int, float], M: dict[int, int]) -> dict[str, list[float]]:
    """Values of each objective that sweep every answer: budgets at and just below every measured peak,
    targets just below and between the measured alignments, weights around every break-even ``dA / dM``."""
    budgets = sorted({M[h] for h in A} | {M[h] - 1 for h in A if M[h] - 1 >= min(M.values())})
    alignments = sorted(set(A.values()))
    # Just below each measured value, not at it: the reference agrees with the probe to round-off only.
    targets = [(a + b) / 2 for a, b in itertools.pairwise(alignments)] + [a - 1e-9 for a in alignments]
    breaks = {(A[j] - A[i]) / (M[j] - M[i]) for i in A for j in A if M[j] > M[i] and A[j] > A[i]}
    weights = sorted({0.0, *(b * f for b in breaks for f in (0.9, 1.1))})
    return {"memory_budget": budgets, "min_alignment": targets, "memory_weight": weights}


def test_each_objective_picks_what_exhaustive_measurement_says(exhaustive: dict[str, Any]) -> None:
    A, M, T = exhaustive["alignment"], exhaustive["memory"], exhaustive["T"]
    report = _select(exhaustive, memory_weight=0.0)
    for kind, values in _objective_values(A, M).items():
        picked = set()
        for value in values:
            expected = _brute_force(kind, value, A, M)
            chosen = choose_horizon(Objective(kind, value), report.alignment_at, report.memory_at, T)  # type: ignore[arg-type]
            assert chosen == expected, f"{kind}={value}: picked {chosen}, exhaustive measurement says {expected}"
            picked.add(chosen)
        if kind != "memory_weight":  # the sweep reaches horizons strictly between local learning and BP
            assert any(1 < h < T for h in picked), (kind, picked)
        # End to end through select_horizon, at the value whose answer is the median horizon picked.
        value = next(v for v in values if _brute_force(kind, v, A, M) == sorted(picked)[len(picked) // 2])
        end_to_end = _select(exhaustive, **{kind: value})
        assert end_to_end.horizon == _brute_force(kind, value, A, M), (kind, value)


def test_impossible_budget_names_the_closest_achievable_value(exhaustive: dict[str, Any]) -> None:
    M = exhaustive["memory"]
    smallest = min(M, key=lambda h: (M[h], h))
    with pytest.raises(ValueError, match="Closest achievable") as info:
        _select(exhaustive, memory_budget=M[smallest] - 1)
    message = str(info.value)
    assert f"({M[smallest]} bytes) at h = {smallest}" in message and "HINT:" in message


def test_unreachable_alignment_names_the_closest_achievable_value() -> None:
    with pytest.raises(ValueError, match=r"Closest achievable: 1\.0 at h = T") as info:
        validate_objective(min_alignment=1.2)
    assert "HINT:" in str(info.value)
    # Without back-propagation among the candidates, the best measured/predicted value is named.
    table = {1: 0.3, 2: 0.55, 3: 0.8}
    with pytest.raises(ValueError, match=re.escape("Closest achievable: cos^2 = 0.8 at h = 3")):
        choose_horizon(Objective("min_alignment", 0.9), table.__getitem__, lambda h: 10.0 * h, 3)


def test_measured_values_win_over_predictions_and_predictions_fill_the_gaps() -> None:
    T = 8
    alignment = {1: 0.2, 2: 0.5, 4: 0.97, 8: 1.0}
    memory = {1: 100, 2: 200, 4: 400, 8: 800}
    law_a = fit_alignment_law({1: 0.2, 2: 0.5, 4: 0.6}, T)  # deliberately disagrees with the measured h = 4
    law_m = fit_memory_law(memory, T)
    report = HorizonReport(alignment, memory, law_a, law_m, Objective("min_alignment", 0.95), T, T)
    assert report.alignment_at(4) == 0.97 and report.predict_alignment(4) != pytest.approx(0.97)
    assert report.alignment_at(3) == report.predict_alignment(3)
    assert report.memory_at(3) == pytest.approx(300.0)
    chosen = choose_horizon(report.objective, report.alignment_at, report.memory_at, T)
    assert chosen == 4  # the law alone would not reach 0.95 before h = 5 or later
    assert min(h for h in range(1, T + 1) if report.predict_alignment(h) >= 0.95) > 4


def test_probe_defaults_and_validation() -> None:
    assert default_probes(1) == [1]
    assert default_probes(6) == [1, 2, 4, 6]
    assert default_probes(32) == [1, 2, 4, 8, 16, 32]
    case = _case("mlp")
    _, blocks, heads, x, y = case
    report = select_horizon(blocks, list(heads), [(x, y)], F.cross_entropy, memory_budget="1GB", probes=[3, 100])
    assert sorted(report.alignment) == [3, 7]  # above T counts as T, and T is always measured
    with pytest.raises(ValueError, match="probes must be integers >= 1"):
        select_horizon(blocks, list(heads), [(x, y)], F.cross_entropy, memory_budget="1GB", probes=[0])


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        ({}, "exactly one objective, got none"),
        ({"memory_budget": "1GB", "min_alignment": 0.5}, "exactly one objective, got memory_budget"),
        ({"min_alignment": 0.0}, "min_alignment must be > 0"),
        ({"memory_weight": -1.0}, "memory_weight must be >= 0"),
        ({"memory_budget": "2 parsecs"}, "Unknown unit"),
    ],
)
def test_bad_objectives(objective: dict[str, Any], message: str) -> None:
    _, blocks, heads, x, y = _case("mlp")
    with pytest.raises(ValueError, match=message) as info:
        select_horizon(blocks, list(heads), [(x, y)], F.cross_entropy, **objective)
    assert "HINT:" in str(info.value)


def test_bad_batches() -> None:
    _, blocks, heads, x, _ = _case("mlp")
    with pytest.raises(ValueError, match="no batches"):
        select_horizon(blocks, list(heads), [], F.cross_entropy, memory_weight=0.0)
    with pytest.raises(ValueError, match=r"Batch 0 is a Tensor.*HINT"):
        select_horizon(blocks, list(heads), [x], F.cross_entropy, memory_weight=0.0)


def test_zero_gradient_everywhere_is_refused() -> None:
    blocks = [nn.Linear(3, 3), nn.Linear(3, 3)]
    x = torch.randn(4, 3)

    def zero_loss(prediction: Tensor, target: Any) -> Tensor:
        return 0.0 * prediction.sum()

    with pytest.raises(ValueError, match="zero on all 1 batches"):
        select_horizon(blocks, [None], [(x, None)], zero_loss, memory_weight=0.0)


def test_selection_leaves_grads_buffers_and_random_state_alone() -> None:
    model, blocks, heads, x, y = _case("cnn_bn")
    model.train()
    for p in [*model.parameters(), *heads.parameters()]:
        p.grad = torch.full_like(p, 0.25)
    grads = [p.grad.clone() for p in [*model.parameters(), *heads.parameters()]]
    buffers = [b.clone() for b in model.buffers()]
    torch.manual_seed(123)
    expected_draw = torch.rand(5)
    torch.manual_seed(123)
    select_horizon(blocks, list(heads), [(x, y), (x.flip(0), y.flip(0))], F.cross_entropy, memory_budget="1GB")
    torch.testing.assert_close(torch.rand(5), expected_draw)
    for p, g in zip([*model.parameters(), *heads.parameters()], grads):
        torch.testing.assert_close(p.grad, g)
    for b, v in zip(model.buffers(), buffers):
        torch.testing.assert_close(b, v)


def test_dropout_draws_the_same_masks_for_every_horizon() -> None:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.Tanh()).double() for _ in range(4)]
    heads = [nn.Identity()] * 3
    x = torch.randn(8, 6, dtype=torch.float64)
    y = torch.randn(8, 6, dtype=torch.float64)
    torch.manual_seed(5)
    report = select_horizon(blocks, heads, [(x, y)], F.mse_loss, memory_weight=0.0, probes=[1, 2, 3, 4])
    params = [p for b in blocks for p in b.parameters()]

    def reference(horizon: int) -> Tensor:
        torch.manual_seed(5)  # the reference draws its masks from the state select_horizon started from
        grads, _ = reference_gradients(blocks, heads, x, y, F.mse_loss, horizon, "sliding")
        return torch.cat([grads[id(p)].reshape(-1) for p in params])

    bp = reference(4)
    for h in (1, 2, 3):
        u = reference(h)
        expected = float(torch.dot(u, bp) ** 2 / (torch.dot(u, u) * torch.dot(bp, bp)))
        assert report.alignment[h] == pytest.approx(expected, abs=1e-10), h


def test_report_summary_table_plot_and_hyperparameters() -> None:
    _, blocks, heads, x, y = _case("mlp")
    report = lightning_mpc.select_horizon(blocks, list(heads), [(x, y)], F.cross_entropy, min_alignment=0.9)
    text = report.summary()
    assert f"-> h = {report.horizon}" in text and "<- chosen" in text and "alignment law" in text
    assert str(report) == text
    rows = report.rows()
    assert sum(r["chosen"] for r in rows) == 1
    assert {r["horizon"] for r in rows} == set(report.alignment) | {report.horizon}
    hp = report.hyperparameters()
    assert hp["mpc/horizon"] == report.horizon and hp["mpc/horizon_objective"] == "min_alignment"
    fig = report.plot()
    assert len(fig.axes) == 2
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert f"chosen h = {report.horizon}" in labels and "min_alignment" in labels
