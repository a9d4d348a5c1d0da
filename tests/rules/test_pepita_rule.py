"""PEPITARule inside Lightning: the strategy writes what the pure function computes, replays dropout masks between
the user's forward and the modulated pass, builds no graph, follows the mirroring schedule, reports telemetry."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from lightning_mpc import PEPITARule, RuleStrategy
from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.rules.pepita import FeedbackProjection, pepita_backward
from tests.lightning.helpers import Classifier, image_data, loader, trainer, vector_data
from tests.rules.cases.pepita import pepita_net


class _Gradients(L.Callback):
    """Copies of every parameter's ``.grad`` when the optimizer steps."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Tensor | None]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.steps.append(
            {n: None if p.grad is None else p.grad.detach().clone() for n, p in pl_module.named_parameters()}
        )


def _module(net: nn.Module | None = None) -> Classifier:
    torch.manual_seed(0)
    return Classifier(net=net if net is not None else pepita_net())


def _fit(module: L.LightningModule, rule: PEPITARule, data: Any = None, **kwargs: Any) -> L.Trainer:
    t = trainer(strategy=RuleStrategy(rule=rule, telemetry=False), **kwargs)
    t.fit(module, data if data is not None else loader(vector_data()))
    return t


def test_the_strategy_writes_the_pure_functions_update() -> None:
    module = _module()
    twin = copy.deepcopy(module)
    grads = _Gradients()
    t = _fit(module, PEPITARule(output_error="first"), max_steps=1, callbacks=[grads])
    x, y = next(iter(loader(vector_data())))
    pepita_backward(twin.net, x, y, module.pepita_feedback.weight(), output_error="first")
    for name, param in twin.named_parameters():
        torch.testing.assert_close(grads.steps[0][name], param.grad, rtol=1e-6, atol=1e-8, msg=name)
    assert t.strategy.rule.last_result is not None


def test_dropout_masks_are_replayed_from_the_users_forward_into_the_modulated_pass() -> None:
    """With F = 0 the modulated pass repeats the first exactly, masks included, so hidden layers get exactly zero."""

    class ZeroFeedback(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            pl_module.pepita_feedback.matrix.zero_()

    net = nn.Sequential(
        nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5)),
        nn.Sequential(nn.Dropout(0.3), nn.Linear(16, 16), nn.Tanh(), nn.Dropout(0.5)),
        nn.Linear(16, 3),
    )
    grads = _Gradients()
    _fit(_module(net), PEPITARule(), max_steps=3, callbacks=[ZeroFeedback(), grads])
    for step in grads.steps:
        for name in ("net.0.0.weight", "net.0.0.bias", "net.1.1.weight", "net.1.1.bias"):
            assert step[name] is not None and torch.count_nonzero(step[name]) == 0, name
        assert torch.count_nonzero(step["net.2.weight"]) > 0


def test_the_first_pass_builds_no_autograd_graph() -> None:
    class Recording(Classifier):
        seen: list[bool]

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            loss = super().training_step(batch, batch_idx)
            self.seen.append(loss.requires_grad)
            return loss

    torch.manual_seed(0)
    module = Recording(net=pepita_net())
    module.seen = []
    _fit(module, PEPITARule(), max_steps=2)
    assert module.seen == [False, False]
    assert torch.is_grad_enabled()


class _Recorder(EngineObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, int | None]] = []
        self.signals: dict[tuple[str, int | None], list[float]] = {}

    def step_started(self) -> None:
        self.events.append(("step_started", None))

    def block_started(self, index: int) -> None:
        self.events.append(("block_started", index))

    def block_finished(self, index: int, output: Tensor) -> None:
        self.events.append(("block_finished", index))

    def local_loss(self, index: int, prediction: Tensor, loss: Tensor) -> None:
        self.events.append(("local_loss", index))

    def backward_started(self, index: int) -> None:
        self.events.append(("backward_started", index))

    def backward_finished(self, index: int) -> None:
        self.events.append(("backward_finished", index))

    def step_completed(self) -> None:
        self.events.append(("step_completed", None))

    def signal(self, name: str, index: int | None, value: float | Tensor) -> None:
        self.signals.setdefault((name, index), []).append(float(value))


def test_the_observer_hears_both_passes_and_the_rules_signals() -> None:
    rule = PEPITARule(mirror=True, alignment_every=1)
    recorder = _Recorder()
    rule.observer = recorder
    _fit(_module(), rule, max_steps=2)
    one_step = recorder.events[: recorder.events.index(("step_completed", None)) + 1]
    assert one_step == [
        ("step_started", None),
        *[(kind, i) for i in range(3) for kind in ("block_started", "block_finished")],
        ("local_loss", 2),
        *[(kind, i) for i in range(3) for kind in ("backward_started", "backward_finished")],
        ("step_completed", None),
    ]
    names = set(recorder.signals)
    expected = {("held_bytes", None), ("bp_angle", None)}
    expected |= {(name, i) for i in range(3) for name in ("modulation", "bp_angle", "mirror_angle")}
    assert expected <= names, expected - names
    for (name, _), values in recorder.signals.items():
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name
        if name.endswith("angle"):
            assert all(0.0 <= v <= 180.0 for v in values)
    # the last layer learns from the output error: close to back-propagation's gradient
    assert recorder.signals[("bp_angle", 2)][0] < 30.0


def test_pre_mirroring_epochs_only_mirror_then_training_starts() -> None:
    class Snapshots(L.Callback):
        def __init__(self) -> None:
            self.weights: list[Tensor] = []
            self.factors: list[Tensor] = []

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self._take(pl_module)

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self._take(pl_module)

        def _take(self, module: L.LightningModule) -> None:
            self.weights.append(module.net[0][0].weight.detach().clone())
            self.factors.append(module.pepita_feedback.factor_0.detach().clone())

    snapshots = Snapshots()
    rule = PEPITARule(mirror=True, pre_mirror_epochs=1, mirror_every=0)
    assert [rule.phase(e) for e in range(3)] == [(False, True), (True, False), (True, False)]
    assert PEPITARule(mirror=True, mirror_every=2).phase(1) == (True, True)
    _fit(_module(), rule, max_epochs=2, limit_train_batches=2, callbacks=[snapshots])
    w0, w1, w2 = snapshots.weights
    f0, f1, f2 = snapshots.factors
    assert torch.equal(w0, w1) and not torch.equal(f0, f1)  # epoch 0: mirroring only
    assert not torch.equal(w1, w2) and torch.equal(f1, f2)  # epoch 1: training only
    assert isinstance(rule.feedback, FeedbackProjection) and rule.feedback.mirrored


def test_a_convolutional_network_trains_under_the_strategy() -> None:
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(4, 4, 3, stride=2), nn.Tanh()),
        nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 3, 3)),
    )
    grads = _Gradients()
    module = _module(net)
    _fit(module, PEPITARule(conv_scale="mean"), loader(image_data()), max_steps=2, callbacks=[grads])
    for step in grads.steps:
        missing = [n for n, g in step.items() if g is None or not torch.isfinite(g).all() or not g.abs().sum() > 0]
        assert not missing, missing
    assert module.pepita_feedback.matrix.shape == (3 * 16 * 16, 3)


def test_load_from_checkpoint_rebuilds_the_feedback_projection(tmp_path: Path) -> None:
    module = _module()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _fit(module, PEPITARule(mirror=True), max_steps=2, callbacks=[checkpoint], enable_checkpointing=True)
    loaded = Classifier.load_from_checkpoint(tmp_path / "last.ckpt", net=pepita_net())
    assert isinstance(loaded.pepita_feedback, FeedbackProjection)
    for key, value in module.pepita_feedback.state_dict().items():
        assert torch.equal(loaded.pepita_feedback.state_dict()[key], value), key


def test_the_time_local_variant_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="pepita_time_local") as info:
        PEPITARule(variant="time_local")  # type: ignore[arg-type]
    assert "HINT" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output_error": "second"},
        {"variant": "mixed"},
        {"conv_scale": "max"},
        {"feedback_scale": 0.0},
        {"mirror_lr": -1.0},
        {"mirror_every": -1},
        {"alignment_every": 1.5},
        {"pre_mirror_epochs": 2},
        {"seed": "0"},
    ],
    ids=lambda kwargs: next(iter(kwargs)),
)
def test_bad_arguments_are_refused_with_a_hint(kwargs: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError), match="HINT"):
        PEPITARule(**kwargs)


def test_trainer_accepts_the_strategy_name() -> None:
    t = trainer(strategy="pepita", max_steps=1)
    module = _module()
    t.fit(module, loader(vector_data()))
    assert isinstance(t.strategy.rule, PEPITARule)
    assert t.global_step == 1


def test_two_processes_equal_one_process_on_the_joint_batch() -> None:
    """PEPITA's updates are batch means: averaged over two half batches they are the joint batch's."""
    from torch.utils.data import DataLoader

    from lightning_mpc import RuleDDPStrategy
    from tests.lightning.helpers import RankShardSampler

    samples, joint = 32, 8
    data = vector_data(n=samples)
    single, distributed = _module(), _module()
    _fit(single, PEPITARule(), DataLoader(data, batch_size=joint), max_epochs=2)
    shards = DataLoader(data, batch_size=joint // 2, sampler=RankShardSampler(samples, joint))
    strategy = RuleDDPStrategy(rule=PEPITARule(), start_method="spawn", telemetry=False)
    trainer(strategy=strategy, devices=2, max_epochs=2, use_distributed_sampler=False).fit(distributed, shards)
    for (name, p), q in zip(distributed.net.named_parameters(), single.net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(single.net[0][0].weight, _module().net[0][0].weight)
