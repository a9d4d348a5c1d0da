"""The target propagation rule's case: a small unrolled tanh RNN classifying short random sequences."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mpc import TPRule
from lightning_mpc.recipes import RecurrentTask
from tests.lightning.helpers import loader
from tests.rules.harness import BadConfig, RuleCase, register_case

SIZES = {"input_size": 3, "hidden_size": 8, "output_size": 3}


def _module(**kwargs: Any) -> RecurrentTask:
    torch.manual_seed(0)
    return RecurrentTask(**SIZES, lr=0.1, **kwargs)


def _sequences() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return loader(TensorDataset(torch.randn(32, 5, 3, generator=g), torch.randint(0, 3, (32,), generator=g)))


def _plain_prediction(module: L.LightningModule, x: Tensor) -> Tensor:
    return module.net(x)


class _FusedRNN(L.LightningModule):
    """A classifier on PyTorch's fused nn.RNN, which the rule cannot step through."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, 8, batch_first=True)
        self.readout = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.rnn(x)[0][:, -1])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


register_case(
    RuleCase(
        name="tp",
        make_module=_module,
        make_rule=lambda: TPRule(gamma_h=0.1, r=1.0),
        train_data=_sequences,
        reference_prediction=_plain_prediction,
        telemetry_keys=["tp/block_00/loss", "tp/block_00/target_residual", "tp/surrogate", "tp/output_loss"],
        bad_configs=[
            BadConfig(
                "relu cell is not invertible",
                lambda: (_module(nonlinearity="relu"), TPRule()),
                ValueError,
                "not invertible",
            ),
            BadConfig("fused nn.RNN", lambda: (_FusedRNN(), TPRule()), TypeError, "fused"),
            BadConfig(
                "GRU cell has no closed-form inverse for the difference form",
                lambda: (_module(cell="gru"), TPRule(form="difference")),
                ValueError,
                'use form="linearized"',
            ),
        ],
    )
)
