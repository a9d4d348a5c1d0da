"""Every registered credit-assignment rule inside Lightning: trains, resumes exactly, predicts with the rule,
logs its telemetry, and refuses bad configurations before training (parametrized over ``tests/rules/cases``)."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_mpc import RuleStrategy, available_rules
from lightning_mpc.rules import build_rule
from tests.lightning.helpers import loader, trainer, vector_data
from tests.lightning.test_reliability import SkipAcrossBlocks
from tests.rules import cases as _cases  # noqa: F401  (registers every case)
from tests.rules.harness import CASES, BadConfig, RuleCase

RULE_CASES = [pytest.param(case, id=name) for name, case in sorted(CASES.items())]
BAD_CONFIGS = [
    pytest.param(case, bad, id=f"{name}-{bad.description}") for name, case in sorted(CASES.items()) for bad in case.bad_configs
]


def _fit(case: RuleCase, module: torch.nn.Module, **kwargs: object) -> object:
    t = trainer(strategy=RuleStrategy(rule=case.make_rule()), **(case.trainer_kwargs | kwargs))
    t.fit(module, case.train_data())
    return t


def test_every_registered_rule_has_a_case() -> None:
    assert set(available_rules()) <= set(CASES), f"rules without a test case: {set(available_rules()) - set(CASES)}"


class _GradientsAtStep(L.Callback):
    """Records which trainable parameters have a gradient when the optimizer steps."""

    def __init__(self) -> None:
        self.missing: list[str] = []
        self.not_finite: list[str] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: object) -> None:
        for name, param in pl_module.named_parameters():
            if not param.requires_grad:
                continue
            if param.grad is None:
                self.missing.append(name)
            elif not torch.isfinite(param.grad).all():
                self.not_finite.append(name)


@pytest.mark.parametrize("case", RULE_CASES)
def test_rule_trains_every_parameter_it_should(case: RuleCase) -> None:
    module = case.make_module()
    before = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    probe = _GradientsAtStep()
    t = _fit(case, module, max_steps=3, callbacks=[probe])
    assert t.global_step == 3
    assert not probe.missing, f"{case.name}: no gradient for {sorted(set(probe.missing))}"
    assert not probe.not_finite, f"{case.name}: gradients not finite for {sorted(set(probe.not_finite))}"
    changed = [name for name, value in before.items() if not torch.equal(dict(module.named_parameters())[name], value)]
    assert changed, f"{case.name}: no parameter changed"
    for attribute, aux in t.strategy.rule.auxiliary_modules().items():
        assert getattr(module, attribute) is aux, f"{case.name}: {attribute} is not registered on the module"


@pytest.mark.parametrize("case", RULE_CASES)
def test_resume_from_a_checkpoint_is_exact(case: RuleCase, tmp_path: Path) -> None:
    epoch = {"limit_train_batches": 2}
    straight = case.make_module()
    _fit(case, straight, max_epochs=2, **epoch)

    first = case.make_module()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _fit(case, first, max_epochs=1, callbacks=[checkpoint], enable_checkpointing=True, **epoch)
    torch.manual_seed(123)  # a different initialisation: everything must come from the checkpoint
    resumed = case.make_module()
    for param in resumed.parameters():
        torch.nn.init.normal_(param.data)
    t = trainer(strategy=RuleStrategy(rule=case.make_rule()), max_epochs=2, **epoch, **case.trainer_kwargs)
    t.fit(resumed, case.train_data(), ckpt_path=str(tmp_path / "last.ckpt"))
    expected = straight.state_dict()
    assert set(resumed.state_dict()) == set(expected)
    for key, value in resumed.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[key], atol=case.atol, rtol=0, msg=f"{case.name}: {key}")


@pytest.mark.parametrize("case", RULE_CASES)
def test_validation_test_and_predict_use_the_rules_prediction(case: RuleCase) -> None:
    module = case.make_module()
    t = _fit(case, module, max_steps=2)
    loader = case.train_data()
    predictions = t.predict(module, loader)
    assert predictions is not None
    module.eval()
    with torch.no_grad():
        for batch, predicted in zip(loader, predictions):
            expected = case.reference_prediction(module, batch[0])
            torch.testing.assert_close(predicted, expected, atol=case.atol, rtol=1e-5)
    t.validate(module, loader, verbose=False)
    if is_overridden("test_step", module):
        t.test(module, loader, verbose=False)


@pytest.mark.parametrize("case", RULE_CASES)
def test_telemetry_logs_the_rules_keys(case: RuleCase, tmp_path: Path) -> None:
    module = case.make_module()
    logger = CSVLogger(tmp_path, name="run")
    _fit(case, module, max_steps=3, logger=logger, log_every_n_steps=1)
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        columns = set(csv.DictReader(handle).fieldnames or [])
    missing = [key for key in case.telemetry_keys if key not in columns]
    assert not missing, f"{case.name}: telemetry keys missing from the CSV log: {missing}"


@pytest.mark.parametrize(("case", "bad"), BAD_CONFIGS)
def test_bad_configuration_stops_before_training_with_a_hint(case: RuleCase, bad: BadConfig) -> None:
    module, rule = bad.make()
    before = copy.deepcopy(module.state_dict())
    t = trainer(strategy=RuleStrategy(rule=rule), max_steps=2, **case.trainer_kwargs)
    with pytest.raises(bad.error, match=bad.match) as info:
        t.fit(module, case.train_data())
    assert "HINT" in str(info.value), f"{case.name}: no HINT in {info.value}"
    assert t.global_step == 0
    for key, value in module.state_dict().items():
        if key in before:
            assert torch.equal(value, before[key]), f"{case.name}: {key} changed before the error"


class _SkipsOneBatch(L.Callback):
    """Snapshots everything a step can change before the skipped batch and again after it."""

    def __init__(self, skipped: int) -> None:
        self.skipped = skipped
        self.before: dict[str, object] | None = None
        self.after: dict[str, object] | None = None

    def _state(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, object]:
        rule = trainer.strategy.rule  # type: ignore[attr-defined]
        # The network's buffers are left out: the user's forward ran, and BatchNorm statistics move as they do
        # in plain Lightning. So is .grad: Lightning's zero_grad runs after a skipped training_step as well.
        return copy.deepcopy(
            {
                "parameters": dict(pl_module.named_parameters()),
                "rule modules": {name: aux.state_dict() for name, aux in rule.auxiliary_modules().items()},
                "rule state": rule.checkpoint_state(),
                "optimizers": [optimizer.state_dict() for optimizer in trainer.optimizers],
            }
        )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int) -> None:
        if batch_idx == self.skipped:
            self.before = self._state(trainer, pl_module)
        elif batch_idx == self.skipped + 1:
            self.after = self._state(trainer, pl_module)


def _assert_same(before: object, after: object, where: str) -> None:
    if isinstance(before, dict):
        assert isinstance(after, dict) and set(before) == set(after), f"{where}: keys differ"
        for key in before:
            _assert_same(before[key], after[key], f"{where}.{key}")
    elif isinstance(before, (list, tuple)):
        assert isinstance(after, (list, tuple)) and len(before) == len(after), f"{where}: lengths differ"
        for i, (b, a) in enumerate(zip(before, after)):
            _assert_same(b, a, f"{where}[{i}]")
    elif isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor) and torch.equal(before, after), f"{where} changed"
    else:
        assert before == after, f"{where}: {before!r} became {after!r}"


@pytest.mark.parametrize("case", RULE_CASES)
def test_a_batch_whose_training_step_returns_none_changes_nothing(case: RuleCase) -> None:
    """Returning ``None`` skips the batch under every rule: parameters, the rule's modules (buffers included) and
    state, and the optimizer state are as they were, although the forward (and the rule's hooks) ran."""
    module = case.make_module()
    forward = module.training_step
    ran: list[int] = []

    def training_step(batch: object, batch_idx: int) -> object:
        output = forward(batch, batch_idx)  # the rule sees the whole forward of the skipped batch
        ran.append(batch_idx)
        return None if batch_idx == 1 else output

    module.training_step = training_step  # type: ignore[method-assign]
    probe = _SkipsOneBatch(skipped=1)
    with pytest.warns(UserWarning, match="training_step returned None: the batch is skipped"):
        _fit(case, module, max_epochs=1, limit_train_batches=3, callbacks=[probe])
    assert ran == [0, 1, 2], f"{case.name}: the skipped batch's forward did not run"
    assert probe.before is not None and probe.after is not None
    _assert_same(probe.before, probe.after, case.name)


class _FrozenGradients(L.Callback):
    """Sets every learning rate to 0 (parameters stay where they are) and records ``.grad`` at each step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = 0.0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: object) -> None:
        self.steps.append(
            {name: p.grad.detach().clone() for name, p in pl_module.named_parameters() if p.grad is not None}
        )


@pytest.mark.parametrize("case", RULE_CASES)
def test_accumulated_gradient_is_the_mean_of_the_micro_batches_gradients(case: RuleCase) -> None:
    """With ``accumulate_grad_batches=2`` the gradient at the optimizer step is the mean of the gradients the rule
    gives each micro-batch on its own (at the same parameters), as Lightning's loss scaling promises."""
    one_by_one, accumulated = _FrozenGradients(), _FrozenGradients()
    _fit(case, case.make_module(), max_steps=2, callbacks=[one_by_one])
    _fit(case, case.make_module(), max_steps=1, accumulate_grad_batches=2, callbacks=[accumulated])
    assert len(one_by_one.steps) == 2 and len(accumulated.steps) == 1
    first, second = one_by_one.steps
    (got,) = accumulated.steps
    assert set(got) == set(first) | set(second), f"{case.name}: different parameters have gradients"
    for name, value in got.items():
        zero = torch.zeros_like(value)
        expected = (first.get(name, zero) + second.get(name, zero)) / 2
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=f"{case.name}: {name}")


@pytest.mark.parametrize("name", sorted(available_rules()))
def test_a_skip_connection_across_blocks_is_refused_before_training(name: str) -> None:
    """No rule trains a forward that skips a block boundary (its gradient path would be lost silently)."""
    rule = build_rule(name)
    torch.manual_seed(0)
    module = SkipAcrossBlocks()
    before = copy.deepcopy(module.state_dict())
    expected = r"output of block 0 .* into block 2 .*HINT" if rule.uses_blocks else "HINT"
    with pytest.raises((RuntimeError, ValueError), match=expected):
        trainer(strategy=RuleStrategy(rule=rule, telemetry=False), max_steps=2).fit(module, loader(vector_data()))
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), f"{name}: {key} changed before the refusal"


class _ClippedNorms(L.Callback):
    """Records the network's and each rule module's gradient norm before clipping and after the optimizer step."""

    def __init__(self) -> None:
        self.before: list[tuple[float, list[float]]] = []
        self.at_step: list[tuple[float, list[float]]] = []

    @staticmethod
    def _norms(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, list[float]]:
        auxiliary = trainer.strategy.rule.auxiliary_modules()  # type: ignore[attr-defined]
        owned = {id(p) for aux in auxiliary.values() for p in aux.parameters()}

        def norm(params: list[torch.nn.Parameter]) -> float:
            grads = [p.grad for p in params if p.grad is not None]
            return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0

        network = [p for p in pl_module.parameters() if id(p) not in owned]
        # One clipping group per rule module, and per member of a ModuleList (one local head, one goodness head).
        members = [m for aux in auxiliary.values() for m in (aux if isinstance(aux, torch.nn.ModuleList) else [aux])]
        return norm(network), [norm(list(member.parameters())) for member in members]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            # Lightning runs the closure (training_step, backward, clipping) inside optimizer.step: after it, .grad
            # holds what the update used.
            optimizer.register_step_post_hook(lambda *_: self.at_step.append(self._norms(trainer, pl_module)))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: object) -> None:
        self.before.append(self._norms(trainer, pl_module))


@pytest.mark.parametrize("case", RULE_CASES)
def test_norm_clipping_bounds_the_network_together_and_each_rule_module_apart(case: RuleCase) -> None:
    """``gradient_clip_val`` clips the network's parameters as one vector (as without the rule) and each of the
    rule's modules (each local head) by its own norm (``docs/reliability.md``)."""
    clip = 1e-3  # below every case's gradient norm: clipping binds
    probe = _ClippedNorms()
    _fit(case, case.make_module(), max_steps=2, callbacks=[probe], gradient_clip_val=clip)
    assert len(probe.before) == len(probe.at_step) == 2
    for (network_before, _), (network, modules) in zip(probe.before, probe.at_step):
        assert network_before > clip, f"{case.name}: the test needs clipping to bind"
        assert network == pytest.approx(clip, rel=1e-4), f"{case.name}: network norm {network} after clipping"
        for norm in modules:
            assert norm <= clip * (1 + 1e-4), f"{case.name}: a rule module's norm {norm} exceeds {clip}"


@pytest.mark.parametrize("precision", ["64-true", "bf16-true", "bf16-mixed", "16-true"])
@pytest.mark.parametrize("case", RULE_CASES)
def test_every_cpu_precision_trains(case: RuleCase, precision: str) -> None:
    """Every precision Lightning offers on the CPU trains under every rule; the rule's modules follow the dtype.

    (Target propagation factorises in float32 under 16-bit precisions: CPU Cholesky has no 16-bit kernel.)
    """
    module = case.make_module()
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    t = _fit(case, module, max_steps=2, precision=precision)
    expected = {"64-true": torch.float64, "bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision, torch.float32)
    parameters = dict(module.named_parameters())
    for name, value in parameters.items():
        assert value.dtype == expected, f"{case.name} {precision}: {name} is {value.dtype}"
        assert torch.isfinite(value).all(), f"{case.name} {precision}: {name} is not finite"
    assert any(not torch.equal(parameters[k].float(), v.float()) for k, v in before.items()), f"{case.name}: nothing moved"
    for attribute, aux in t.strategy.rule.auxiliary_modules().items():  # type: ignore[attr-defined]
        for value in aux.parameters():
            assert value.dtype == expected, f"{case.name} {precision}: {attribute} is {value.dtype}"


@pytest.mark.parametrize("case", RULE_CASES)
def test_a_frozen_parameter_stays_and_the_others_still_learn(case: RuleCase) -> None:
    """Fine-tuning with part of the network frozen: the rule writes no gradient into a parameter with
    ``requires_grad=False`` (it does not move) and every other trainable parameter still gets one."""
    module = case.make_module()
    name, frozen = next(iter(module.named_parameters()))
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    probe = _GradientsAtStep()
    _fit(case, module, max_steps=2, callbacks=[probe])
    assert frozen.grad is None, f"{case.name}: the rule wrote a gradient into the frozen {name}"
    assert torch.equal(frozen, before), f"{case.name}: the frozen {name} moved"
    assert not probe.missing, f"{case.name}: no gradient for {sorted(set(probe.missing))}"


@pytest.mark.parametrize("case", RULE_CASES)
def test_validation_between_training_steps_leaves_training_exactly_as_without_it(case: RuleCase) -> None:
    """The sanity check and a validation after every training batch (the rule's prediction runs in between)
    change nothing in what training computes: the state after 4 steps is the same bit for bit."""
    plain = case.make_module()
    _fit(case, plain, max_steps=4)
    interleaved = case.make_module()
    t = trainer(
        strategy=RuleStrategy(rule=case.make_rule()),
        max_steps=4,
        val_check_interval=1,
        limit_val_batches=2,
        num_sanity_val_steps=2,
        **case.trainer_kwargs,
    )
    t.fit(interleaved, case.train_data(), case.train_data())
    assert t.fit_loop.epoch_loop.val_loop.batch_progress.total.completed >= 8, "validation did not run in between"
    expected = plain.state_dict()
    for key, value in interleaved.state_dict().items():
        assert torch.equal(value, expected[key]), f"{case.name}: {key} differs after interleaved validation"
