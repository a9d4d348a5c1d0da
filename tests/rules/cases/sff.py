"""The Scalable FF rule's case: a small CNN; its prediction is the blocks' averaged goodness vote."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from lightning_mpc import SFFRule
from lightning_mpc.rules.sff.functional import sff_votes
from tests.lightning.helpers import Classifier, image_data, loader
from tests.rules.harness import BadConfig, RuleCase, register_case


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(inplace=True)),
        nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(6, 3)),
    )


def _module() -> L.LightningModule:
    torch.manual_seed(0)
    return Classifier(net=_net())


def _vote(module: L.LightningModule) -> object:
    def predict(x: Tensor) -> Tensor:
        return sff_votes(list(module.net), list(module.sff_heads), x)

    return predict


def _five_d_block() -> tuple[L.LightningModule, SFFRule]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Unflatten(1, (2, 2))),
        nn.Sequential(nn.Flatten(1), nn.Linear(4 * 16 * 16, 3)),
    )
    return Classifier(net=net), SFFRule()


def _one_block() -> tuple[L.LightningModule, SFFRule]:
    torch.manual_seed(0)
    return Classifier(net=nn.Sequential(nn.Sequential(nn.Flatten(1), nn.Linear(3 * 16 * 16, 3)))), SFFRule()


register_case(
    RuleCase(
        name="sff",
        make_module=_module,
        make_rule=lambda: SFFRule(),
        train_data=lambda: loader(image_data(n=32)),
        reference_prediction=lambda module, x: _vote(module)(x),  # type: ignore[operator]
        telemetry_keys=["sff/block_00/loss", "sff/block_02/loss", "sff/block_00/goodness_true"],
        bad_configs=[
            BadConfig("a block with a 5-d output", _five_d_block, ValueError, "outputs torch.Size"),
            BadConfig("a single block", _one_block, ValueError, "at least 2 blocks"),
        ],
    )
)
