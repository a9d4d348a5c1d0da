"""The target propagation rule inside Lightning: the same step as the pure function, telemetry events, errors."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mpc import RuleStrategy, TPRule
from lightning_mpc.core.heads import default_local_loss
from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.data import temporal_order
from lightning_mpc.recipes import RecurrentTask
from lightning_mpc.rules.tp import RNNSequenceModel, UnrolledRNN, find_sequence_model, tp_backward
from tests.lightning.helpers import trainer

SIZES = {"input_size": 3, "hidden_size": 8, "output_size": 3}


def _module(**kwargs: Any) -> RecurrentTask:
    torch.manual_seed(0)
    return RecurrentTask(**SIZES, lr=0.1, **kwargs)


def _data(length: int = 6, n: int = 16, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, length, 3, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("surrogate", ["unrolled", "local"])
def test_a_lightning_step_is_the_functional_step(surrogate: str, accumulate: int) -> None:
    rule = TPRule(gamma_h=0.1, r=2.0, surrogate=surrogate)  # type: ignore[arg-type]
    module = _module()
    manual = copy.deepcopy(module.net)
    loader = _data()
    t = trainer(strategy=RuleStrategy(rule=rule, telemetry=False), max_steps=2, accumulate_grad_batches=accumulate)
    t.fit(module, loader)

    optimizer = torch.optim.SGD(manual.parameters(), lr=0.1)
    batches = iter(loader)
    for _ in range(2):
        for _ in range(accumulate):
            x, y = next(batches)
            tp_backward(
                manual,
                x,
                lambda prediction, y=y: default_local_loss(prediction, y),
                gamma_h=0.1,
                r=2.0,
                surrogate=surrogate,  # type: ignore[arg-type]
                scale=lambda value: value / accumulate,
            )
        optimizer.step()
        optimizer.zero_grad()
    for (name, got), expected in zip(module.net.named_parameters(), manual.parameters()):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
    assert rule.last_result is not None and rule.last_result.targets.shape == (4, 6, 8)


class _Recorder(EngineObserver):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def step_started(self) -> None:
        self.events.append(("step_started",))

    def local_loss(self, index: int, prediction: Tensor, loss: Tensor) -> None:
        self.events.append(("local_loss", index, float(loss)))

    def signal(self, name: str, index: int | None, value: float | Tensor) -> None:
        self.events.append(("signal", name, index, float(value)))

    def step_completed(self) -> None:
        self.events.append(("step_completed",))


@pytest.mark.parametrize(("length", "segments"), [(6, 4), (3, 8)])
def test_telemetry_events_report_segments_of_the_sequence(length: int, segments: int) -> None:
    rule = TPRule(gamma_h=0.1, telemetry_segments=segments)
    recorder = _Recorder()
    rule.observer = recorder
    trainer(strategy=RuleStrategy(rule=rule, telemetry=False), max_steps=1).fit(_module(), _data(length))
    kinds = [event[0] for event in recorder.events]
    assert kinds[0] == "step_started" and kinds[-1] == "step_completed"
    count = min(length, segments)
    losses = [event for event in recorder.events if event[0] == "local_loss"]
    assert [event[1] for event in losses] == list(range(count))
    result = rule.last_result
    assert result is not None
    assert sum(event[2] for event in losses) == pytest.approx(float(result.surrogate), rel=1e-5)
    signals = {(event[1], event[2]) for event in recorder.events if event[0] == "signal"}
    per_segment = {(name, i) for name in ("loss", "target_residual") for i in range(count)}
    assert signals == per_segment | {("output_loss", None), ("surrogate", None)}
    segment_losses = [event[3] for event in recorder.events if event[0] == "signal" and event[1] == "loss"]
    assert segment_losses == [event[2] for event in losses]


def test_the_rule_learns_temporal_order() -> None:
    x, y = temporal_order(3000, 10, generator=torch.Generator().manual_seed(0))
    x_eval, y_eval = temporal_order(500, 10, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    module = RecurrentTask(input_size=6, hidden_size=32, output_size=4, lr=0.1)
    before = float((module(x_eval).argmax(-1) == y_eval).float().mean())
    loader = DataLoader(TensorDataset(x, y), batch_size=20, shuffle=False)
    trainer(strategy=RuleStrategy(rule=TPRule(gamma_h=1e-2, r=1.0), telemetry=False), max_steps=150).fit(module, loader)
    with torch.no_grad():
        after = float((module(x_eval).argmax(-1) == y_eval).float().mean())
    assert before < 0.4 and after > 0.9, (before, after)


def test_the_strategy_flag_builds_the_rule() -> None:
    t = trainer(strategy="tp", max_steps=1)
    assert isinstance(t.strategy, RuleStrategy) and isinstance(t.strategy.rule, TPRule)
    t.fit(_module(), _data())
    assert t.global_step == 1


class _TwoForwards(RecurrentTask):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        self(x)
        return default_local_loss(self(x), y)


class _NoForward(RecurrentTask):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.net.readout.weight.sum()


@pytest.mark.parametrize(("cls", "match"), [(_TwoForwards, "called 2 times"), (_NoForward, "never called")])
def test_training_step_must_run_the_rnn_once(cls: type[RecurrentTask], match: str) -> None:
    torch.manual_seed(0)
    module = cls(**SIZES)
    t = trainer(strategy=RuleStrategy(rule=TPRule(), telemetry=False), max_steps=1)
    with pytest.raises(RuntimeError, match=f"{match}.*HINT"):
        t.fit(module, _data())


def test_sequences_of_length_zero_stop_with_a_hint() -> None:
    t = trainer(strategy=RuleStrategy(rule=TPRule(), telemetry=False), max_steps=1)
    with pytest.raises(ValueError, match="length 0.*HINT"):
        t.fit(_module(), _data(length=0))
    assert t.global_step == 0


class _Pair(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = RNNSequenceModel(3, 8, 3)
        self.teacher = RNNSequenceModel(3, 8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return default_local_loss(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


def test_several_models_need_a_name() -> None:
    with pytest.raises(ValueError, match="2 RNNSequenceModels.*HINT"):
        trainer(strategy=RuleStrategy(rule=TPRule(), telemetry=False), max_steps=1).fit(_Pair(), _data())
    module = _Pair()
    teacher = copy.deepcopy(module.teacher.state_dict())
    trainer(strategy=RuleStrategy(rule=TPRule(model="net"), telemetry=False), max_steps=1).fit(module, _data())
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher[key])


def test_finding_the_model_explains_what_is_missing() -> None:
    holder = nn.Module()
    with pytest.raises(ValueError, match="no RNNSequenceModel.*HINT"):
        find_sequence_model(holder)
    holder.rnn = UnrolledRNN(3, 4)
    with pytest.raises(ValueError, match="outside an RNNSequenceModel.*HINT"):
        find_sequence_model(holder)
    holder.gru = nn.GRU(3, 4)
    with pytest.raises(TypeError, match="GRU.*fused.*HINT"):
        find_sequence_model(holder)
    with pytest.raises(ValueError, match="no submodule 'missing'.*HINT"):
        find_sequence_model(holder, "missing")
    with pytest.raises(TypeError, match="not an RNNSequenceModel.*HINT"):
        find_sequence_model(holder, "rnn")
