"""The ``<rule>_ddp`` strategies of FF, SFF and TP: two processes on half batches equal one process on the joint batch.

Each rule's gradients are batch means of per-sample terms (FF with hardest negatives draws no random labels;
the SFF network has no BatchNorm, whose batch statistics would differ per shard), so averaging the two
processes' gradients must give the joint batch's update, step after step. (MPC and PEPITA have the same
test in ``tests/lightning/test_ddp.py`` and ``tests/rules/test_pepita_rule.py``.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_mpc import FFRule, RuleDDPStrategy, RuleStrategy, SFFRule, TPRule
from lightning_mpc.rules import CreditRule
from tests.lightning.helpers import Classifier, RankShardSampler, image_data, trainer, vector_data
from tests.rules.cases.tp import _module as recurrent_module
from tests.rules.cases.tp import _sequences


def _ff_module() -> L.LightningModule:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Linear(6, 16), nn.ReLU()), nn.Sequential(nn.Linear(16, 12), nn.ReLU()), nn.Linear(12, 3)
    )
    return Classifier(net=net)


def _sff_module() -> L.LightningModule:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(6, 3)),
    )
    return Classifier(net=net)


@dataclass(frozen=True)
class DDPCase:
    make_module: Callable[[], L.LightningModule]
    make_rule: Callable[[], CreditRule]
    data: Callable[[], Dataset]
    atol: float = 1e-6


CASES = {
    "ff": DDPCase(_ff_module, lambda: FFRule(negatives="hardest"), lambda: vector_data(n=32)),
    "sff": DDPCase(_sff_module, SFFRule, lambda: image_data(n=32)),
    # TP solves a regularized least-squares problem per step (a Cholesky factorisation): the half batches'
    # average differs from the joint batch's in the sixth digit
    "tp": DDPCase(recurrent_module, lambda: TPRule(gamma_h=0.1, r=1.0), lambda: _sequences().dataset, atol=1e-5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_equal_one_process_on_the_joint_batch(name: str) -> None:
    case = CASES[name]
    data = case.data()
    samples, joint = len(data), 8  # type: ignore[arg-type]
    single, distributed, untrained = case.make_module(), case.make_module(), case.make_module()
    strategy = RuleStrategy(rule=case.make_rule(), telemetry=False)
    torch.manual_seed(1)  # the rule's modules (SFF's goodness heads) are drawn at setup: the same draws in both runs
    trainer(strategy=strategy, max_epochs=2).fit(single, DataLoader(data, batch_size=joint))
    shards = DataLoader(data, batch_size=joint // 2, sampler=RankShardSampler(samples, joint))
    ddp = RuleDDPStrategy(rule=case.make_rule(), start_method="spawn", telemetry=False)
    assert ddp.rule.name == name
    torch.manual_seed(1)  # Lightning's spawn launcher hands this state to the processes
    trainer(strategy=ddp, devices=2, max_epochs=2, use_distributed_sampler=False).fit(distributed, shards)
    trained = dict(single.named_parameters())
    assert trained, "the module has no parameters"
    for key, value in distributed.named_parameters():
        torch.testing.assert_close(value, trained[key], rtol=1e-5, atol=case.atol, msg=f"{name}: {key}")
    moved = [k for k, v in untrained.named_parameters() if not torch.equal(v, trained[k])]
    assert moved, f"{name}: no parameter changed in training, the comparison proves nothing"
