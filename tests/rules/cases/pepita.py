"""The PEPITA rule's case: an MLP of Linear+activation blocks (no BatchNorm, no dropout, so that a resumed run
replays the same batches exactly); its prediction is the plain model."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from lightning_mpc import PEPITARule
from tests.lightning.helpers import Classifier, loader, mlp_net, vector_data
from tests.rules.harness import BadConfig, RuleCase, register_case


def pepita_net(in_features: int = 6, width: int = 16, classes: int = 3) -> nn.Sequential:
    """Three blocks: Linear+Tanh, Linear+ReLU, Linear (the blocks PEPITA trains)."""
    return nn.Sequential(
        nn.Sequential(nn.Linear(in_features, width), nn.Tanh()),
        nn.Sequential(nn.Linear(width, width), nn.ReLU()),
        nn.Linear(width, classes),
    )


def _module() -> L.LightningModule:
    torch.manual_seed(0)
    return Classifier(net=pepita_net())


def _plain_prediction(module: L.LightningModule, x: Tensor) -> Tensor:
    return module.net(x)


def _with_batchnorm() -> tuple[L.LightningModule, PEPITARule]:
    torch.manual_seed(0)
    return Classifier(net=mlp_net()), PEPITARule()  # mlp_net's first block holds a BatchNorm1d


def _two_layers_in_a_block() -> tuple[L.LightningModule, PEPITARule]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU()), nn.Linear(16, 3))
    return Classifier(net=net), PEPITARule()


def _softmax_output() -> tuple[L.LightningModule, PEPITARule]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Linear(6, 16), nn.ReLU()), nn.Sequential(nn.Linear(16, 3), nn.Softmax(dim=1)))
    return Classifier(net=net), PEPITARule()


def _mirroring_a_convolution() -> tuple[L.LightningModule, PEPITARule]:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Unflatten(1, (1, 1, 6)), nn.Conv2d(1, 2, (1, 3)), nn.ReLU(), nn.Flatten())
    return Classifier(net=nn.Sequential(conv, nn.Linear(8, 3))), PEPITARule(mirror=True)


register_case(
    RuleCase(
        name="pepita",
        make_module=_module,
        make_rule=lambda: PEPITARule(alignment_every=1),
        train_data=lambda: loader(vector_data()),
        reference_prediction=_plain_prediction,
        telemetry_keys=[
            "pepita/block_02/forward_ms",
            "pepita/block_00/backward_ms",
            "pepita/block_00/activation_bytes",
            "pepita/block_02/loss",
            "pepita/block_00/modulation",
            "pepita/block_01/bp_angle",
            "pepita/held_bytes",
        ],
        bad_configs=[
            BadConfig("batchnorm in a block", _with_batchnorm, ValueError, "BatchNorm1d"),
            BadConfig("two layers in one block", _two_layers_in_a_block, ValueError, "2 trainable layers"),
            BadConfig("softmax after the last layer", _softmax_output, ValueError, "followed by Softmax"),
            BadConfig("mirroring a convolution", _mirroring_a_convolution, ValueError, "hold convolutions"),
        ],
    )
)
