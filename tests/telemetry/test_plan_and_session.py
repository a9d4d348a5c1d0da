"""The Trainer-free parts of the telemetry: what to measure when, and records in, metrics out."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_mpc.telemetry import MeasurementPlan, StepRecord, TelemetrySession, block_key, network_key


def test_plan_measures_the_first_step_every_n_and_the_last() -> None:
    plan = MeasurementPlan(every=4, alignment_every=6)
    measured = [step for step in range(1, 16) if plan.at(step, last_step=15).measure]
    assert measured == [1, 4, 6, 8, 12, 15]  # 6 is measured because the alignment is
    aligned = [step for step in range(1, 16) if plan.at(step, last_step=15).align]
    assert aligned == [1, 6, 12]
    assert not plan.at(4, accumulating=True).measure  # only the window's last micro-batch is measured
    assert [s for s in range(1, 10) if MeasurementPlan(every=50).at(s).measure] == [1]
    assert not any(MeasurementPlan(every=3).at(s).align for s in range(1, 10))


@pytest.mark.parametrize(("every", "alignment_every"), [(0, 0), (1, -1)])
def test_plan_refuses_bad_intervals(every: int, alignment_every: int) -> None:
    with pytest.raises(ValueError, match="HINT"):
        MeasurementPlan(every, alignment_every)


def _record(losses: dict[int, float]) -> StepRecord:
    record = StepRecord(losses={k: torch.tensor(v) for k, v in losses.items()})
    record.memory_bytes = {0: 100, 1: 300, 2: 200}
    record.peak_memory_bytes = 320
    record.forward_ms = {0: 1.0, 1: 2.0, 2: 3.0}
    record.backward_ms = {0: 0.5, 1: 0.5}
    record.signals = {("goodness", 1): torch.tensor(2.5), ("defect", None): 0.25}
    return record


def test_session_turns_a_record_into_named_series_and_headline() -> None:
    session = TelemetrySession("ff", num_blocks=3)
    record = _record({0: 1.0, 1: 2.0})
    target = torch.tensor([0, 1, 1, 0])
    predictions = {0: torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]]), 2: torch.eye(2)[[0, 1, 1, 0]]}
    losses, accuracy = session.accumulate(record, torch.tensor(3.0), predictions, target)
    assert sorted(losses) == [0, 1, 2]  # the returned loss is the last block's
    series, headline = session.step_metrics(
        record, losses, accuracy, grad_norms=[torch.tensor(1.5), None, torch.tensor(0.5)],
        alignment=([0.5, float("nan"), 1.0], 0.75), backprop_bytes=640,
    )
    values = session.resolve(series, step=7)
    assert values[block_key("ff", 0, "loss")] == 1.0 and values[block_key("ff", 2, "loss")] == 3.0
    assert values[block_key("ff", 0, "accuracy")] == 0.75 and values[block_key("ff", 2, "accuracy")] == 1.0
    assert values[block_key("ff", 1, "activation_bytes")] == 300.0
    assert values[block_key("ff", 1, "goodness")] == 2.5 and values[network_key("ff", "defect")] == 0.25
    assert values[block_key("ff", 0, "grad_norm")] == 1.5 and block_key("ff", 1, "grad_norm") not in values
    assert block_key("ff", 1, "alignment") not in values  # nan is not logged
    assert headline == {"ff/alignment": 0.75, "ff/peak_activation_bytes": 320.0, "ff/activation_ratio": 0.5}
    assert values["ff/backprop_activation_bytes"] == 640.0
    assert session.history_steps == [7] and session.history_loss == [[1.0, 2.0, 3.0]]
    assert session.measured["activation_bytes"][1] == [300.0]


def test_session_epoch_means_count_every_step() -> None:
    session = TelemetrySession("mpc", num_blocks=2)
    for loss0, final in ((1.0, 4.0), (3.0, 6.0)):
        session.accumulate(StepRecord(losses={0: torch.tensor(loss0)}), torch.tensor(final), {}, None)
    loss, accuracy = session.epoch_values()
    assert loss == [2.0, 5.0] and all(math.isnan(a) for a in accuracy)
    assert session.epoch_metrics(loss, accuracy) == {"mpc/block_00/loss_epoch": 2.0, "mpc/block_01/loss_epoch": 5.0}
    rows = session.table_rows(0, ["net.0", "net.1"], loss, accuracy)
    assert rows[0][:5] == [0, 0, "net.0", 2.0, None]
    session.reset_epoch()
    assert all(math.isnan(v) for v in session.epoch_values()[0])
