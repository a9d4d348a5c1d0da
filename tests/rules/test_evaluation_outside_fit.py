"""``validate``/``test``/``predict`` on a Trainer that did not run ``fit`` (a new process, ``lightning-mpc test
--ckpt_path``) still use the rule's prediction, for every registered rule (parametrized over ``tests/rules/cases``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mpc import RuleStrategy
from tests.lightning.helpers import trainer
from tests.rules import cases as _cases  # noqa: F401  (registers every case)
from tests.rules.harness import CASES, RuleCase

RULE_CASES = [pytest.param(case, id=name) for name, case in sorted(CASES.items())]


def _expected(case: RuleCase, module: torch.nn.Module) -> list[torch.Tensor]:
    module.eval()
    with torch.no_grad():
        return [case.reference_prediction(module, batch[0]) for batch in case.train_data()]  # type: ignore[arg-type]


@pytest.mark.parametrize("case", RULE_CASES)
def test_a_new_trainer_predicts_with_the_rule_from_a_checkpoint(case: RuleCase, tmp_path: Path) -> None:
    trained = case.make_module()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fitter = trainer(strategy=RuleStrategy(rule=case.make_rule()), max_steps=2, callbacks=[checkpoint], enable_checkpointing=True)
    fitter.fit(trained, case.train_data())
    expected = _expected(case, trained)

    torch.manual_seed(321)
    fresh = case.make_module()
    for param in fresh.parameters():
        torch.nn.init.normal_(param.data)
    predictor = trainer(strategy=RuleStrategy(rule=case.make_rule()), **case.trainer_kwargs)
    predictions = predictor.predict(fresh, case.train_data(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert predictions is not None
    for got, want in zip(predictions, expected):
        torch.testing.assert_close(got, want, atol=case.atol, rtol=1e-5)
    predictor.validate(fresh, case.train_data(), verbose=False)


@pytest.mark.parametrize("case", RULE_CASES)
def test_a_new_trainer_predicts_with_the_rule_on_a_trained_module(case: RuleCase) -> None:
    module = case.make_module()
    trainer(strategy=RuleStrategy(rule=case.make_rule()), max_steps=2, **case.trainer_kwargs).fit(module, case.train_data())
    expected = _expected(case, module)
    predictions = trainer(strategy=RuleStrategy(rule=case.make_rule())).predict(module, case.train_data())
    assert predictions is not None
    for got, want in zip(predictions, expected):
        torch.testing.assert_close(got, want, atol=case.atol, rtol=1e-5)
