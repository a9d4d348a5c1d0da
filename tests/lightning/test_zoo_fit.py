"""One Lightning fit step under ``strategy="mpc"`` for every supported model family, heads built automatically."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_mpc import MPCStrategy, partition
from lightning_mpc.core.heads import LocalHead
from tests.lightning.helpers import Classifier, image_data, loader, trainer
from tests.zoo import CLASSES, ZooModel, zoo_params


@pytest.mark.parametrize("entry", zoo_params())
def test_one_fit_step_trains_every_block(entry: ZooModel) -> None:
    torch.manual_seed(0)
    module = Classifier(net=entry.build(), lr=0.1)
    before = copy.deepcopy(module.net)
    data = image_data(n=4, size=entry.size, classes=CLASSES)
    t = trainer(strategy=MPCStrategy(horizon=2, telemetry=False), max_steps=1)
    t.fit(module, loader(data, batch_size=4))
    blocks = module.mpc_blocks
    assert len(blocks) == len(partition(before)) and len(module.mpc_heads) == len(blocks) - 1
    assert all(isinstance(head, LocalHead) for head in module.mpc_heads)
    # Every parameter received its gradient (a zero-initialised classifier may make some exactly zero) ...
    for name, param in [*module.net.named_parameters(), *module.mpc_heads.named_parameters()]:
        assert param.grad is not None, f"{entry.name}: {name} got no gradient"
    # ... and the bare parameters (class tokens, position embeddings), which live in no submodule, learned.
    old = dict(before.named_parameters())
    changed = {name for name, p in module.net.named_parameters() if not torch.equal(p.detach(), old[name])}
    assert changed
    for bare in ("class_token", "encoder.pos_embedding", "cls_token", "pos_embed", "reg_token"):
        if bare in old:
            assert bare in changed, f"{entry.name}: {bare} did not learn"
