"""The parallel-in-time rule's case: a residual MLP (stem, 4 ODE steps, classifier), 2 slabs, 2 sweeps.

Its prediction is the plain model. Refused before training: steps of unequal width, more slabs than steps,
a non-residual block between the steps.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from lightning_mpc import PinTRule, ResidualStep, residual_mlp
from tests.lightning.helpers import Classifier, loader, vector_data
from tests.rules.harness import BadConfig, RuleCase, register_case

STEPS = 4


def _net() -> nn.Sequential:
    return residual_mlp(num_steps=STEPS, width=8, in_features=6, num_classes=3, horizon=1.0)


def _module() -> L.LightningModule:
    torch.manual_seed(0)
    return Classifier(net=_net())


def _plain_prediction(module: L.LightningModule, x: Tensor) -> Tensor:
    return module.net(x)


def _unequal_width() -> tuple[L.LightningModule, PinTRule]:
    torch.manual_seed(0)
    steps = [ResidualStep(nn.Linear(8, 8), 0.25), ResidualStep(nn.Linear(8, 12), 0.25)]
    net = nn.Sequential(nn.Linear(6, 8), *steps, nn.Linear(8, 3))
    return Classifier(net=net), PinTRule(slabs=2)


def _too_many_slabs() -> tuple[L.LightningModule, PinTRule]:
    return _module(), PinTRule(slabs=STEPS + 1)


def _non_residual_block() -> tuple[L.LightningModule, PinTRule]:
    torch.manual_seed(0)
    blocks = list(_net())
    blocks.insert(3, nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
    return Classifier(net=nn.Sequential(*blocks)), PinTRule(slabs=2)


register_case(
    RuleCase(
        name="pint",
        make_module=_module,
        make_rule=lambda: PinTRule(slabs=2, iterations=2),
        train_data=lambda: loader(vector_data()),
        reference_prediction=_plain_prediction,
        telemetry_keys=[f"pint/block_{STEPS + 1:02d}/loss", "pint/state_defect", "pint/costate_defect"],
        bad_configs=[
            BadConfig("steps of unequal width", _unequal_width, ValueError, "keeps the width"),
            BadConfig("more slabs than steps", _too_many_slabs, ValueError, "4 residual steps into 5 slabs"),
            BadConfig("a non-residual block between steps", _non_residual_block, ValueError, "is not a ResidualStep"),
        ],
    )
)
