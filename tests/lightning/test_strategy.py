"""MPCStrategy inside Lightning's loop: equivalences, Lightning features, errors."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

import lightning_mpc
from lightning_mpc import MPCStrategy, horizon_backward, partition
from tests.lightning.helpers import (
    Classifier,
    image_data,
    loader,
    mlp_net,
    small_resnet,
    trainer,
    twins,
    vector_data,
)
from tests.models import auto_heads


def _assert_same_parameters(a: nn.Module, b: nn.Module, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    for (name, p), q in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def test_strategy_name_is_registered_at_import() -> None:
    t = trainer(strategy="mpc")
    assert isinstance(t.strategy, MPCStrategy)
    assert t.strategy.root_device == torch.device("cpu")
    assert t.strategy.horizon == 1 and t.strategy.mode == "sliding"
    assert "mpc" in L.pytorch.strategies.StrategyRegistry
    assert lightning_mpc.MPCStrategy is MPCStrategy


def test_full_horizon_trains_like_plain_lightning() -> None:
    torch.manual_seed(0)
    plain, mpc = twins(Classifier())
    data = vector_data()
    trainer().fit(plain, loader(data))
    trainer(strategy=MPCStrategy(horizon=5)).fit(mpc, loader(data))
    _assert_same_parameters(mpc.net, plain.net)
    # A horizon beyond the depth is back-propagation too.
    torch.manual_seed(0)
    _, deeper = twins(Classifier())
    trainer(strategy=MPCStrategy(horizon=50, mode="block")).fit(deeper, loader(data))
    _assert_same_parameters(deeper.net, plain.net)


def _hand_loop(
    net: nn.Module,
    heads: nn.ModuleList,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    horizon: int,
    mode: str,
    accumulate: int,
    clip: float | None,
    lr: float,
) -> None:
    params = [*net.parameters(), *heads.parameters()]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    blocks = partition(net)
    for start in range(0, len(batches), accumulate):
        optimizer.zero_grad()
        for x, y in batches[start : start + accumulate]:
            horizon_backward(blocks, list(heads), x, y, F.cross_entropy, horizon, mode)
        for p in params:
            if p.grad is not None:
                p.grad /= accumulate
        if clip is not None:  # the network together, each local head by its own norm (docs/reliability.md)
            torch.nn.utils.clip_grad_norm_(list(net.parameters()), clip)
            for head in heads:
                torch.nn.utils.clip_grad_norm_(list(head.parameters()), clip)
        optimizer.step()


@pytest.mark.parametrize(
    ("family", "mode", "accumulate", "clip"),
    [
        ("mlp", "sliding", 1, None),
        ("mlp", "sliding", 2, None),
        ("mlp", "block", 2, None),
        ("mlp", "sliding", 1, 0.05),
        ("resnet18", "sliding", 2, None),
    ],
)
def test_horizon_two_equals_a_hand_loop_over_horizon_backward(
    family: str, mode: str, accumulate: int, clip: float | None
) -> None:
    torch.manual_seed(0)
    if family == "mlp":
        net, data = mlp_net().double(), vector_data()
        data.tensors = (data.tensors[0].double(), data.tensors[1])
    else:
        net, data = small_resnet().double(), image_data()
        data.tensors = (data.tensors[0].double(), data.tensors[1])
    heads = auto_heads(partition(net), data.tensors[0][:2]).double()
    module = Classifier(net=copy.deepcopy(net), heads=copy.deepcopy(heads))
    train_loader = loader(data, batch_size=4 if family == "resnet18" else 8)
    batches = list(train_loader)

    _hand_loop(net, heads, batches, 2, mode, accumulate, clip, module.lr)
    trainer(
        strategy=MPCStrategy(horizon=2, mode=mode), accumulate_grad_batches=accumulate, gradient_clip_val=clip
    ).fit(module, train_loader)

    _assert_same_parameters(module.net, net, rtol=1e-7, atol=1e-9)
    _assert_same_parameters(module.mpc_heads, heads, rtol=1e-7, atol=1e-9)


class _GradientCheck(Callback):
    """Records which parameters hold a gradient when the optimizer steps."""

    def __init__(self) -> None:
        self.missing: set[str] = set()
        self.steps = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.steps += 1
        self.missing |= {n for n, p in pl_module.named_parameters() if p.requires_grad and p.grad is None}


@pytest.mark.parametrize("horizon", [1, 2, 3])
def test_auto_heads_are_built_optimized_and_every_parameter_learns(horizon: int) -> None:
    torch.manual_seed(0)
    module = Classifier()
    check = _GradientCheck()
    before = copy.deepcopy(module.net)
    trainer(strategy=MPCStrategy(horizon=horizon), callbacks=[check]).fit(module, loader(vector_data()))
    assert check.steps == 8 and not check.missing
    assert len(module.mpc_blocks) == 5 and len(module.mpc_heads) == 4
    assert [h.spec.kind for h in module.mpc_heads] == ["vector"] * 4
    for block, old in zip(module.net, before):  # every block moved (a bias before BatchNorm has zero gradient)
        assert any(not torch.equal(p, q) for p, q in zip(block.parameters(), old.parameters()))
    assert any(k.startswith("mpc_heads.") for k in module.state_dict())
    assert not any(k.startswith("mpc_heads.") for k in module.state_dict_without_heads())
    module.remove_heads()
    assert not any(k.startswith("mpc_heads.") for k in module.state_dict())


def test_resnet_trains_with_feature_map_heads() -> None:
    torch.manual_seed(0)
    module = Classifier(net=small_resnet())
    check = _GradientCheck()
    trainer(strategy=MPCStrategy(horizon=2), callbacks=[check], max_steps=2).fit(module, loader(image_data(), 4))
    assert not check.missing
    kinds = [h.spec.kind for h in module.mpc_heads]
    assert len(module.mpc_blocks) == 10 and kinds == ["feature_map"] * 9


def test_bf16_mixed_precision_trains() -> None:
    torch.manual_seed(0)
    module = Classifier()
    before = copy.deepcopy(module.net)
    t = trainer(strategy=MPCStrategy(horizon=2), precision="bf16-mixed")
    t.fit(module, loader(vector_data()))
    assert torch.isfinite(t.callback_metrics["train_loss"])
    for p, q in zip(module.net.parameters(), before.parameters()):
        assert torch.isfinite(p).all() and not torch.equal(p, q)


def test_validation_and_predict_run_the_plain_model() -> None:
    torch.manual_seed(0)
    module = Classifier()
    data = vector_data()
    t = trainer(strategy=MPCStrategy(horizon=2), limit_val_batches=2)
    t.fit(module, loader(data), loader(data))
    assert "val_loss" in t.callback_metrics
    predictions = torch.cat(t.predict(module, loader(data)))
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(predictions, module.net(data.tensors[0]))
    assert "optimizer_zero_grad" not in vars(module), "zero_grad must be handed back at teardown"


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path: Any) -> None:
    torch.manual_seed(0)
    straight, first_half = twins(Classifier())
    data = vector_data()
    torch.manual_seed(1)  # the local heads are initialised in setup, from the global generator
    trainer(strategy=MPCStrategy(horizon=2), max_epochs=2).fit(straight, loader(data))

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    torch.manual_seed(1)
    trainer(strategy=MPCStrategy(horizon=2), max_epochs=1, callbacks=[ckpt], enable_checkpointing=True).fit(
        first_half, loader(data)
    )
    torch.manual_seed(123)  # a different initialisation: everything must come from the checkpoint
    resumed = Classifier()
    trainer(strategy=MPCStrategy(horizon=2), max_epochs=2).fit(resumed, loader(data), ckpt_path=tmp_path / "last.ckpt")
    _assert_same_parameters(resumed, straight, rtol=1e-6, atol=1e-7)

    loaded = Classifier.load_from_checkpoint(tmp_path / "last.ckpt")
    assert loaded.mpc_heads is not None and len(loaded.mpc_heads) == 4
    _assert_same_parameters(loaded, first_half)


def test_plain_lightning_module_without_the_mixin_trains() -> None:
    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp_net()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.body(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Plain()
    check = _GradientCheck()
    trainer(strategy="mpc", callbacks=[check], max_steps=3).fit(module, loader(vector_data()))
    assert not check.missing and len(module.mpc_heads) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": 0}, "horizon must be >= 1"),
        ({"horizon": "2"}, "horizon must be an integer"),
        ({"mode": "sideways"}, "mode must be one of"),
    ],
)
def test_bad_strategy_arguments_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MPCStrategy(**kwargs)


def test_module_without_a_network_names_its_children() -> None:
    class NoNet(Classifier):
        def __init__(self) -> None:
            super().__init__()
            del self.net
            self.encoder = nn.Linear(6, 3)

    with pytest.raises(ValueError, match=r"no nn.Sequential or torchvision ResNet child.*encoder \(Linear\).*HINT"):
        trainer(strategy="mpc").fit(NoNet(), loader(vector_data()))


def test_module_with_two_networks_names_the_candidates() -> None:
    class TwoNets(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.other = nn.Sequential(nn.Linear(3, 3))

    with pytest.raises(ValueError, match=r"several networks.*net \(Sequential\), other \(Sequential\).*HINT"):
        trainer(strategy="mpc").fit(TwoNets(), loader(vector_data()))


def test_blocks_not_run_by_forward_are_reported_before_training() -> None:
    class Skips(Classifier):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net[-1](self.net[0](x)[:, :16])

    with pytest.raises(RuntimeError, match=r"did not run the 5 blocks once each in order.*HINT"):
        trainer(strategy="mpc").fit(Skips(), loader(vector_data()))


def test_manual_optimization_is_refused() -> None:
    class Manual(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(RuntimeError, match="manual optimization.*HINT"):
        trainer(strategy="mpc").fit(Manual(), loader(vector_data()))


def test_several_devices_point_to_the_ddp_strategy() -> None:
    with pytest.raises(ValueError, match="MPCStrategy runs on one device.*mpc_ddp"):
        trainer(strategy="mpc", devices=2).fit(Classifier(), loader(vector_data()))


def test_wrong_number_of_custom_heads_is_explained() -> None:
    module = Classifier(heads=nn.ModuleList([nn.Linear(16, 3)]))
    with pytest.raises(ValueError, match=r"gave 1 heads for 5 blocks; expected 4"):
        trainer(strategy="mpc").fit(module, loader(vector_data()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_accelerator_selects_the_cuda_device() -> None:
    t = trainer(strategy="mpc", accelerator="gpu")
    assert t.strategy.root_device.type == "cuda"
    module = Classifier()
    t.fit(module, loader(vector_data()))
    assert next(module.parameters()).device.type == "cpu"  # Lightning moves the model back at teardown


def test_parameters_frozen_during_training_stop_learning() -> None:
    class FreezeFirstBlock(Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 2:
                pl_module.net[0].requires_grad_(False)

    torch.manual_seed(0)
    module = Classifier()
    snapshot: dict[str, torch.Tensor] = {}

    class Snapshot(Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
            if trainer.global_step == 2:
                snapshot.update({k: v.clone() for k, v in pl_module.net[0].state_dict().items()})

    trainer(strategy=MPCStrategy(horizon=2), callbacks=[FreezeFirstBlock(), Snapshot()]).fit(
        module, loader(vector_data())
    )
    for name, value in module.net[0].state_dict().items():
        if "running" not in name and "num_batches" not in name:
            torch.testing.assert_close(value, snapshot[name], msg=lambda m: f"{name} moved after freezing: {m}")
