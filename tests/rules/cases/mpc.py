"""The MPC rule's case: an MLP classifier, horizon 2 in sliding mode; its prediction is the plain model."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from lightning_mpc import MPCRule
from tests.lightning.helpers import Classifier, loader, mlp_net, vector_data
from tests.rules.harness import BadConfig, RuleCase, register_case


def _module() -> L.LightningModule:
    torch.manual_seed(0)
    return Classifier()


def _plain_prediction(module: L.LightningModule, x: Tensor) -> Tensor:
    return module.net(x)


def _skip_connection() -> tuple[L.LightningModule, MPCRule]:
    class Skip(Classifier):
        def forward(self, x: Tensor) -> Tensor:
            h1 = self.net[0](x)
            h2 = self.net[1](h1)
            h3 = self.net[2](h2 + h1)
            return self.net[4](self.net[3](h3))

    torch.manual_seed(0)
    return Skip(), MPCRule(horizon=5)


register_case(
    RuleCase(
        name="mpc",
        make_module=_module,
        make_rule=lambda: MPCRule(horizon=2, mode="sliding"),
        train_data=lambda: loader(vector_data()),
        reference_prediction=_plain_prediction,
        telemetry_keys=["mpc/block_00/loss", "mpc/block_03/loss", "mpc/block_00/forward_ms"],
        bad_configs=[
            BadConfig("skip connection across blocks", _skip_connection, RuntimeError, "skipping a block boundary"),
            BadConfig(
                "a block returns integers",
                lambda: (Classifier(net=nn.Sequential(mlp_net(), _ArgMax(), nn.Identity())), MPCRule()),
                TypeError,
                "returned a torch.int64 tensor",
            ),
        ],
    )
)


class _ArgMax(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.argmax(dim=1, keepdim=True)
