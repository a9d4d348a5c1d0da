"""The Scalable FF rule inside Lightning: the step's gradients are ``sff_backward``'s, torchvision ResNet-18 and
MobileNetV3 train with every parameter, and the inference options give the votes or the classifier."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_mpc import RuleStrategy, SFFRule
from lightning_mpc.recipes import MobileNetV3Classifier, ResNetClassifier
from lightning_mpc.rules.sff.functional import sff_backward, sff_votes
from tests.lightning.helpers import image_data, loader, trainer
from tests.rules.cases.sff import _module


class _FirstStep(L.Callback):
    """Gradients and the rule's heads at the first optimizer step (before anything changed)."""

    def __init__(self) -> None:
        self.grads: dict[str, Tensor] | None = None
        self.heads: Any = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.grads is None:
            self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            self.heads = copy.deepcopy(pl_module.sff_heads)


@pytest.mark.parametrize(("loss", "margin", "logits"), [("ce", 1.0, "log"), ("margin", 0.5, "raw")])
def test_a_lightning_step_equals_sff_backward(loss: str, margin: float, logits: str) -> None:
    module = _module()
    reference = copy.deepcopy(module)
    probe = _FirstStep()
    rule = SFFRule(loss=loss, margin=margin, logits=logits)  # type: ignore[arg-type]
    trainer(strategy=RuleStrategy(rule=rule), max_steps=1, callbacks=[probe]).fit(module, loader(image_data(n=32)))
    assert probe.grads is not None
    x, y = next(iter(loader(image_data(n=32))))
    heads = probe.heads
    for head in heads:
        head.zero_grad(set_to_none=True)
    sff_backward(list(reference.net), list(heads), x, y, loss, margin, logits, final_loss=F.cross_entropy)  # type: ignore[arg-type]
    expected = {n: p.grad for n, p in reference.named_parameters()}
    expected |= {f"sff_heads.{n}": p.grad for n, p in heads.named_parameters()}
    assert set(probe.grads) == set(expected)
    for name, grad in probe.grads.items():
        torch.testing.assert_close(grad, expected[name], msg=name)


class _AllGradients(L.Callback):
    def __init__(self) -> None:
        self.missing: list[str] = []
        self.steps = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.steps += 1
        self.missing += [n for n, p in pl_module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResNetClassifier("resnet18", num_classes=3, in_channels=1, stem="imagenet", cosine=False),
        lambda: MobileNetV3Classifier("mobilenet_v3_small", num_classes=3, in_channels=1, cosine=False),
    ],
    ids=["resnet18", "mobilenet_v3_small"],
)
def test_torchvision_resnet18_and_mobilenet_v3_train_every_parameter(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    module = make()
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 3, (8,), generator=g))
    probe = _AllGradients()
    t = trainer(strategy=RuleStrategy(rule=SFFRule()), max_steps=2, callbacks=[probe])
    t.fit(module, loader(data, batch_size=4))
    assert probe.steps == 2
    assert not probe.missing, f"no finite gradient for {sorted(set(probe.missing))}"
    assert len(module.sff_heads) == len(module.mpc_blocks) - 1
    predicted = torch.cat(t.predict(module, loader(data, batch_size=4)))  # type: ignore[arg-type]  # arg-max classes
    module.eval()
    expected = sff_votes(module.mpc_blocks, list(module.sff_heads), data.tensors[0])
    assert torch.equal(predicted, expected.argmax(dim=1))


@pytest.mark.parametrize("inference", ["last", "model"])
def test_inference_options(inference: str) -> None:
    module = _module()
    rule = SFFRule(inference=inference)  # type: ignore[arg-type]
    t = trainer(strategy=RuleStrategy(rule=rule), max_steps=2)
    data = image_data(n=32)
    t.fit(module, loader(data))
    predicted = torch.cat(t.predict(module, loader(data)))  # type: ignore[arg-type]
    module.eval()
    with torch.no_grad():
        x = data.tensors[0]
        expected = module.net(x) if inference == "model" else sff_votes(list(module.net), list(module.sff_heads), x, "last")
    torch.testing.assert_close(predicted, expected, atol=1e-5, rtol=1e-5)


def test_arguments_are_validated() -> None:
    for kwargs, match in (
        ({"loss": "hinge"}, "loss"),
        ({"margin": -1.0}, "margin"),
        ({"logits": "exp"}, "logits"),
        ({"kernel_size": 2}, "kernel_size"),
        ({"inference": "vote"}, "inference"),
        ({"num_classes": 1}, "num_classes"),
    ):
        with pytest.raises(ValueError, match=f"{match}.*HINT"):
            SFFRule(**kwargs)  # type: ignore[arg-type]
