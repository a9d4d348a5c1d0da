"""What the Lightning tests need to know about each credit-assignment rule.

Every registered rule has a :class:`RuleCase` (see ``tests/rules/cases/``): a small LightningModule and
data suited to the rule, the rule configured for the test, the rule's prediction computed independently of
the strategy, the telemetry keys the rule logs, and configurations the rule must refuse before training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_mpc.rules import CreditRule


@dataclass
class BadConfig:
    """A configuration the rule must refuse before training, with a HINT.

    Attributes:
        description: what is wrong (the test id).
        make: returns ``(module, rule)`` for the bad configuration.
        error: the exception type expected from ``fit``.
        match: a regular expression the message must match (``HINT`` is checked separately).
    """

    description: str
    make: Callable[[], tuple[L.LightningModule, CreditRule]]
    error: type[Exception]
    match: str


@dataclass
class RuleCase:
    """One rule's test case.

    Attributes:
        name: the registered rule name.
        make_module: a fresh, seeded LightningModule (its ``predict_step`` returns ``self(batch[0])``).
        make_rule: the rule configured for the test.
        train_data: the training dataloader (deterministic, not shuffled).
        reference_prediction: the rule's prediction for a batch input, computed without the strategy.
        telemetry_keys: metric names the rule's telemetry logs (checked in the CSV log).
        bad_configs: configurations refused before training.
        trainer_kwargs: extra Trainer arguments (e.g. ``gradient_clip_val``).
        atol: tolerance of the resume and prediction comparisons.
    """

    name: str
    make_module: Callable[[], L.LightningModule]
    make_rule: Callable[[], CreditRule]
    train_data: Callable[[], DataLoader]
    reference_prediction: Callable[[L.LightningModule, Tensor], Tensor]
    telemetry_keys: list[str]
    bad_configs: list[BadConfig] = field(default_factory=list)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    atol: float = 1e-6


CASES: dict[str, RuleCase] = {}


def register_case(case: RuleCase) -> RuleCase:
    """Add ``case`` (one per rule name)."""
    assert case.name not in CASES, f"two test cases for rule {case.name!r}"
    CASES[case.name] = case
    return case
