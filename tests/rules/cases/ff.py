"""The Forward-Forward rule's case: an MLP of two FF layers and a readout; its prediction is the goodness arg-max."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from lightning_mpc import FFRule
from lightning_mpc.rules.ff.functional import FFObjective, goodness_scores
from tests.lightning.helpers import Classifier, loader, vector_data
from tests.rules.harness import BadConfig, RuleCase, register_case

PEER = 0.03


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Linear(6, 16), nn.ReLU()),
        nn.Sequential(nn.Linear(16, 12), nn.ReLU()),
        nn.Linear(12, 3),
    )


def _module() -> L.LightningModule:
    torch.manual_seed(0)
    return Classifier(net=_net())


def _goodness_prediction(module: L.LightningModule, x: Tensor) -> Tensor:
    return goodness_scores(list(module.net)[:-1], x, 3, FFObjective(peer_weight=PEER), "all_but_first")


def _one_block() -> tuple[L.LightningModule, FFRule]:
    torch.manual_seed(0)
    return Classifier(net=nn.Sequential(nn.Linear(6, 3))), FFRule()


def _too_many_classes() -> tuple[L.LightningModule, FFRule]:
    return _module(), FFRule(num_classes=10)


register_case(
    RuleCase(
        name="ff",
        make_module=_module,
        make_rule=lambda: FFRule(peer_weight=PEER, seed=7),
        train_data=lambda: loader(vector_data()),
        reference_prediction=_goodness_prediction,
        telemetry_keys=["ff/block_00/loss", "ff/block_01/loss", "ff/block_00/goodness_pos", "ff/block_01/separation"],
        bad_configs=[
            BadConfig("a single block", _one_block, ValueError, "at least 2 blocks"),
            BadConfig("fewer input values than classes", _too_many_classes, ValueError, "fewer than the 10 classes"),
        ],
    )
)
