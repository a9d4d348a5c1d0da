"""The Forward-Forward rule inside Lightning: the step's gradients are the pure functions', the returned loss
trains only the readout, and the readout prediction is the readout on neutral-label features."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc import FFRule, RuleStrategy
from lightning_mpc.rules.ff.functional import (
    FFObjective,
    embed_label,
    ff_backward,
    hardest_negative_labels,
    length_normalize,
    random_negative_labels,
)
from tests.lightning.helpers import Classifier, image_data, loader, trainer, vector_data

C = 3


def _module() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Linear(6, 10), nn.ReLU()),
        nn.Sequential(nn.Linear(10, 8), nn.ReLU()),
        nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
        nn.Linear(8, C),
    )
    return Classifier(net=net)


class _FirstStepGradients(L.Callback):
    def __init__(self) -> None:
        self.grads: dict[str, Tensor] | None = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.grads is None:
            self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def _neutral_features(blocks: list[nn.Module], x: Tensor, objective: FFObjective) -> Tensor:
    h = embed_label(x, None, C, objective.label_value)
    with torch.no_grad():
        for block in blocks:
            h = block(length_normalize(h, objective.eps))
    return length_normalize(h, objective.eps)


@pytest.mark.parametrize("negatives", ["random", "hardest"])
def test_a_lightning_step_equals_ff_backward_plus_the_readout_loss(negatives: str) -> None:
    options: dict[str, Any] = {"goodness": "mean", "sharpness": 4.0, "label_value": 2.0, "peer_weight": 0.1}
    module = _module()
    reference = copy.deepcopy(module)
    probe = _FirstStepGradients()
    rule = FFRule(negatives=negatives, seed=11, **options)  # type: ignore[arg-type]
    trainer(strategy=RuleStrategy(rule=rule), max_steps=1, callbacks=[probe]).fit(module, loader(vector_data()))
    assert probe.grads is not None

    x, y = next(iter(loader(vector_data())))
    objective = FFObjective(**options)
    blocks = list(reference.net)
    layers, readout = blocks[:-1], blocks[-1]
    if negatives == "hardest":
        wrong = hardest_negative_labels(layers, x, y, C, objective)
    else:
        wrong = random_negative_labels(y, C, torch.Generator().manual_seed(11))
    peer = [torch.zeros(w) for w in (10, 8, 8)]
    ff_backward(layers, embed_label(x, y, C, 2.0), embed_label(x, wrong, C, 2.0), objective, peer_means=peer)
    F.cross_entropy(readout(_neutral_features(layers, x, objective)), y).backward()
    expected = {n: p.grad for n, p in reference.named_parameters()}
    assert set(probe.grads) == set(expected)
    for name, grad in probe.grads.items():
        torch.testing.assert_close(grad, expected[name], msg=name)
    for index, means in enumerate(peer):
        torch.testing.assert_close(getattr(module.ff_peer, f"mean_{index:02d}"), means)


def test_readout_prediction_is_the_readout_on_neutral_features() -> None:
    module = _module()
    rule = FFRule(prediction="readout")
    t = trainer(strategy=RuleStrategy(rule=rule), max_steps=2)
    t.fit(module, loader(vector_data()))
    predicted = torch.cat(t.predict(module, loader(vector_data())))  # type: ignore[arg-type]
    x = vector_data().tensors[0]
    blocks = list(module.net)
    expected = blocks[-1](_neutral_features(blocks[:-1], x, FFObjective()))
    torch.testing.assert_close(predicted, expected)


def test_ff_layers_build_no_graph_in_the_users_forward_and_autograd_is_restored() -> None:
    class Failing(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            out = self(batch[0])
            assert torch.is_grad_enabled()
            self.seen_requires_grad = [out.requires_grad]
            raise RuntimeError("boom")

    torch.manual_seed(0)
    module = Failing(net=_module().net)
    seen: list[bool] = []
    module.net[1].register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))
    with pytest.raises(RuntimeError, match="boom"):
        trainer(strategy=RuleStrategy(rule=FFRule()), max_steps=1).fit(module, loader(vector_data()))
    assert torch.is_grad_enabled()
    assert seen[-1] is False  # the FF layer ran without autograd inside the user's forward
    assert module.seen_requires_grad == [True]  # the readout's output still carries its graph


def test_ff_trains_a_convolutional_network_with_the_label_in_the_top_row() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(4, C)),
    )
    module = Classifier(net=net)
    seen: list[Tensor] = []
    module.net[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    data = image_data(n=16, size=8)
    t = trainer(strategy=RuleStrategy(rule=FFRule(label_value=3.0)), max_steps=2)
    t.fit(module, loader(data))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
    stacked = next(t for t in seen if t.shape[0] == 16)  # the first FF pass: positive then negative data, normalised
    x, y = data.tensors[0][:8], data.tensors[1][:8]
    raw = torch.cat([x, x]).clone()
    raw[:, 0, 0, :C] = 0.0
    raw[torch.arange(8), 0, 0, y] = 3.0
    assert torch.equal(stacked[:8, 0, 0, :C].argmax(dim=1), y)
    torch.testing.assert_close(stacked[:8], length_normalize(raw[:8]))
    assert not bool((stacked[8:, 0, 0, :C].argmax(dim=1) == y).any())
