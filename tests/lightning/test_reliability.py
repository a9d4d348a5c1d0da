"""The outside audit's findings (issue "Reliability"): no silent wrong training, no raw crashes.

Each test failed on lightning-mpc 0.1.0.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mpc import MPCDDPStrategy, MPCStrategy, partition
from tests.lightning.helpers import Classifier, RankShardSampler, loader, mlp_net, trainer, twins, vector_data
from tests.models import auto_heads


def _assert_same(a: nn.Module, b: nn.Module, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------- 1. tied weights under mpc_ddp
class TiedClassifier(Classifier):
    """Block 2 reuses block 0's weight, and the output projection after the last block reuses it again."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Sequential(nn.Linear(6, 6), nn.Tanh()),
            nn.Sequential(nn.Linear(6, 6), nn.Tanh()),
            nn.Sequential(nn.Linear(6, 6), nn.Tanh()),
            nn.Linear(6, 6),
        )
        net[2][0].weight = net[0][0].weight
        heads = auto_heads(partition(net), torch.randn(2, 6))
        super().__init__(net=net, heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.net(x), self.net[0][0].weight[:3])


@pytest.mark.parametrize("horizon", [1, 2])
def test_tied_weights_under_mpc_ddp_with_overlap_equal_one_process(horizon: int) -> None:
    samples, joint = 32, 8
    data = vector_data(n=samples)
    single, distributed = TiedClassifier(), TiedClassifier()
    trainer(strategy=MPCStrategy(horizon=horizon), max_epochs=2).fit(single, DataLoader(data, batch_size=joint))
    shards = DataLoader(data, batch_size=joint // 2, sampler=RankShardSampler(samples, joint))
    # telemetry off: this test is about the averaged gradients; one CI run saw a rank abort at exit after fit
    # here (not reproduced), and the telemetry's profiler threads are one suspect
    strategy = MPCDDPStrategy(horizon=horizon, overlap_communication=True, start_method="spawn", telemetry=False)
    trainer(strategy=strategy, devices=2, max_epochs=2, use_distributed_sampler=False).fit(distributed, shards)
    assert not torch.equal(single.net[0][0].weight, TiedClassifier().net[0][0].weight)
    _assert_same(distributed.net, single.net, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- 2. skip connections across blocks
class SkipAcrossBlocks(Classifier):
    def forward(self, x: Tensor) -> Tensor:
        h1 = self.net[0](x)
        h2 = self.net[1](h1)
        h3 = self.net[2](h2 + h1)
        return self.net[4](self.net[3](h3))


@pytest.mark.parametrize("horizon", [1, 5])
def test_skip_connection_across_blocks_stops_before_training(horizon: int) -> None:
    torch.manual_seed(0)
    module = SkipAcrossBlocks()
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(RuntimeError, match=r"output of block 0 .* into block 2 .*HINT.*merge blocks 0\.\.2"):
        trainer(strategy=MPCStrategy(horizon=horizon)).fit(module, loader(vector_data()))
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key])


def test_skip_into_the_model_output_is_found_too() -> None:
    class SkipToOutput(Classifier):
        def forward(self, x: Tensor) -> Tensor:
            h1 = self.net[0](x)
            rest = self.net[1:](h1)
            return rest + h1[:, :3]

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match=r"output of block 0 .* into the model's output.*HINT"):
        trainer(strategy="mpc").fit(SkipToOutput(), loader(vector_data()))


# ----------------------------------------------------------------------------- 3. return None skips the batch
class SkipsNonFinite(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        x, y = batch
        if not torch.isfinite(x).all():
            return None
        return F.cross_entropy(self(x), y)


def _with_nan_batch(n: int = 48, bad: int = 2, batch: int = 8) -> tuple[TensorDataset, TensorDataset]:
    data = vector_data(n=n)
    x, y = data.tensors[0].clone(), data.tensors[1]
    x[bad * batch + 3, 1] = float("nan")
    keep = torch.ones(n, dtype=torch.bool)
    keep[bad * batch : (bad + 1) * batch] = False
    return TensorDataset(x, y), TensorDataset(x[keep], y[keep])


def test_returning_none_leaves_parameters_heads_and_optimizer_as_if_the_batch_never_ran() -> None:
    poisoned, clean = _with_nan_batch()
    torch.manual_seed(0)
    skipping, reference = twins(SkipsNonFinite())
    torch.manual_seed(1)
    t1 = trainer(strategy=MPCStrategy(horizon=2))
    with pytest.warns(UserWarning, match="batch is skipped.*as if the batch never ran"):
        t1.fit(skipping, loader(poisoned))
    torch.manual_seed(1)
    t2 = trainer(strategy=MPCStrategy(horizon=2))
    t2.fit(reference, loader(clean))
    for name, value in skipping.state_dict().items():
        assert torch.isfinite(value).all() if value.is_floating_point() else True, f"{name} was poisoned"
    _assert_same(skipping, reference, atol=1e-7, rtol=1e-6)  # the heads are parameters of the module too
    state_a = t1.optimizers[0].state_dict()["state"]
    state_b = t2.optimizers[0].state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key]["momentum_buffer"], state_b[key]["momentum_buffer"])


def test_returning_none_inside_an_accumulation_window_matches_plain_lightning() -> None:
    poisoned, _ = _with_nan_batch(bad=3)  # the second micro-batch of the second window
    torch.manual_seed(0)
    mpc, plain = twins(SkipsNonFinite())
    trainer(strategy=MPCStrategy(horizon=5), accumulate_grad_batches=2).fit(mpc, loader(poisoned))
    trainer(accumulate_grad_batches=2).fit(plain, loader(poisoned))
    _assert_same(mpc.net, plain.net, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- 4. clipping and the heads
@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_full_horizon_with_clipping_equals_plain_training_with_clipping(algorithm: str) -> None:
    torch.manual_seed(0)
    mpc, plain = twins(Classifier(lr=0.5))
    clip = {"gradient_clip_val": 0.05, "gradient_clip_algorithm": algorithm}
    trainer(strategy=MPCStrategy(horizon=5), **clip).fit(mpc, loader(vector_data()))
    trainer(**clip).fit(plain, loader(vector_data()))
    _assert_same(mpc.net, plain.net, atol=1e-6, rtol=1e-5)


def test_each_head_is_clipped_by_its_own_norm() -> None:
    from lightning_mpc.lightning.controller import RuleController
    from lightning_mpc.rules import MPCRule

    class Probe(L.Callback):
        norms: list[float] = []

        def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
            pass

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
            self.norms = [
                float(torch.cat([p.grad.flatten() for p in head.parameters()]).norm()) for head in pl_module.mpc_heads
            ]

    torch.manual_seed(0)
    probe = Probe()
    module = Classifier(lr=0.0)
    trainer(strategy=MPCStrategy(horizon=2), gradient_clip_val=1e-3, max_steps=1, callbacks=[probe]).fit(
        module, loader(vector_data())
    )
    assert len(probe.norms) == 4
    assert all(norm == pytest.approx(1e-3, rel=1e-4) for norm in probe.norms)
    assert RuleController(MPCRule()).auxiliary_groups() == []


# ----------------------------------------------------------------------------- 5. in-place first op in a block
class InPlaceCuts(Classifier):
    def configure_blocks(self) -> list[nn.Module]:
        # VGG-style: the cut falls before an in-place ReLU.
        return [self.net[0], self.net[1], self.net[2], self.net[3]]


def test_in_place_first_op_in_a_block_trains_exactly_inside_lightning() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 16),
        nn.Sequential(nn.ReLU(inplace=True), nn.Linear(16, 16)),
        nn.Sequential(nn.ReLU(inplace=True), nn.Linear(16, 16)),
        nn.Sequential(nn.ReLU(inplace=True), nn.Linear(16, 3)),
    )
    mpc, plain = twins(InPlaceCuts(net=net))
    trainer(strategy=MPCStrategy(horizon=4)).fit(mpc, loader(vector_data()))
    trainer().fit(plain, loader(vector_data()))
    _assert_same(mpc.net, plain.net)
    trainer(strategy=MPCStrategy(horizon=2)).fit(copy.deepcopy(mpc), loader(vector_data()))


# ----------------------------------------------------------------------------- 6. every CPU precision
@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-true", "bf16-mixed", "16-true"])
def test_every_cpu_precision_trains_as_plain_lightning_does(precision: str) -> None:
    torch.manual_seed(0)
    plain, mpc = twins(Classifier())
    try:
        trainer(precision=precision, max_steps=2).fit(plain, loader(vector_data()))
    except Exception as err:  # noqa: BLE001 - a precision plain Lightning cannot run on this CPU is out of scope
        pytest.skip(f"plain Lightning cannot train with precision={precision} here: {err}")
    trainer(strategy=MPCStrategy(horizon=2), precision=precision, max_steps=2).fit(mpc, loader(vector_data()))
    for name, value in mpc.state_dict().items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name


# ----------------------------------------------------------------------------- 7. float64 heads survive a reload
def test_float64_model_reloaded_keeps_float64_heads_and_trains_again(tmp_path: Any) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    module = Classifier().double()
    data = TensorDataset(vector_data().tensors[0].double(), vector_data().tensors[1])
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(strategy=MPCStrategy(horizon=2), precision="64-true", callbacks=[checkpoint], enable_checkpointing=True).fit(
        module, loader(data)
    )
    loaded = Classifier.load_from_checkpoint(tmp_path / "last.ckpt")
    assert {p.dtype for p in loaded.mpc_heads.parameters()} == {torch.float64}
    trainer(strategy=MPCStrategy(horizon=2), precision="64-true").fit(loaded, loader(data))


# ----------------------------------------------------------------------------- 8. W&B chart errors never stop training
def test_an_error_in_the_wandb_charts_does_not_stop_training(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import WandbLogger

    from lightning_mpc.telemetry import wandb_extras

    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("chart backend exploded")

    monkeypatch.setattr(wandb_extras, "block_charts", broken)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="reliability")
    torch.manual_seed(0)
    t = trainer(strategy=MPCStrategy(horizon=2), logger=logger, max_epochs=2, log_every_n_steps=1)
    with pytest.warns(UserWarning, match="chart backend exploded"):
        t.fit(Classifier(), loader(vector_data()))
    assert t.current_epoch == 2
    logger.experiment.finish()


# ----------------------------------------------------------------------------- 9. modules without the mixin
class PlainModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp_net()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def test_module_without_mixin_reloads_and_resumes(tmp_path: Any) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    straight, first = twins(PlainModule())
    torch.manual_seed(1)
    trainer(strategy=MPCStrategy(horizon=2), max_epochs=2).fit(straight, loader(vector_data()))
    torch.manual_seed(1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(strategy=MPCStrategy(horizon=2), max_epochs=1, callbacks=[checkpoint], enable_checkpointing=True).fit(
        first, loader(vector_data())
    )
    loaded = PlainModule.load_from_checkpoint(tmp_path / "last.ckpt")  # the plain model, no heads
    assert not hasattr(loaded, "mpc_heads")
    _assert_same(loaded.net, first.net, atol=0, rtol=0)
    torch.manual_seed(5)
    resumed = PlainModule()
    trainer(strategy=MPCStrategy(horizon=2), max_epochs=2).fit(resumed, loader(vector_data()), ckpt_path=tmp_path / "last.ckpt")
    _assert_same(resumed, straight)


# ----------------------------------------------------------------------------- 10-13. errors that name the block
def test_head_whose_input_size_does_not_match_its_block_is_named() -> None:
    heads = nn.ModuleList([nn.Linear(16, 3), nn.Linear(7, 3), nn.Linear(16, 3), nn.Linear(16, 3)])
    with pytest.raises(RuntimeError, match=r"Head 1 \(Linear\) failed on block 1's output of shape \(8, 16\).*HINT"):
        trainer(strategy=MPCStrategy(horizon=2)).fit(Classifier(heads=heads), loader(vector_data()))


def test_integer_targets_of_shape_n_by_1_name_the_local_loss() -> None:
    data = vector_data()
    column = TensorDataset(data.tensors[0], data.tensors[1][:, None])

    class ColumnTargets(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return F.cross_entropy(self(batch[0]), batch[1][:, 0])

    with pytest.raises(ValueError, match=r"local loss.*shape \(8, 1\).*HINT: squeeze"):
        trainer(strategy="mpc").fit(ColumnTargets(), loader(column))


def test_block_that_returns_integers_stops_before_training() -> None:
    class ArgMax(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.argmax(dim=1, keepdim=True)

    net = nn.Sequential(nn.Linear(6, 16), ArgMax(), nn.Linear(1, 3))
    # ArgMax has no parameters: it joins the block before it, which then returns integers.
    with pytest.raises(TypeError, match=r"Block 0 \(BlockSpan\(Linear\.\.ArgMax\)\) returned a torch.int64 tensor.*HINT"):
        trainer(strategy="mpc").fit(Classifier(net=net), loader(vector_data()))


def test_full_horizon_says_once_that_it_is_back_propagation(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer(strategy=MPCStrategy(horizon=9), max_steps=1).fit(Classifier(), loader(vector_data()))
    messages = [r.getMessage() for r in caplog.records if "exact back-propagation" in r.getMessage()]
    assert len(messages) == 1 and "horizon 9 over 5 blocks" in messages[0]


def test_single_block_is_said_to_be_back_propagation(caplog: pytest.LogCaptureFixture) -> None:
    class OneBlock(Classifier):
        def configure_blocks(self) -> list[nn.Module]:
            return [self.net]

    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer(strategy="mpc", max_steps=1).fit(OneBlock(), loader(vector_data()))
    assert any("a single block is exact back-propagation" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", ["yes", 1.0, None])
def test_telemetry_argument_is_checked_when_the_strategy_is_built(value: object) -> None:
    with pytest.raises(TypeError, match="telemetry must be True, False or an MPCTelemetry.*HINT"):
        MPCStrategy(telemetry=value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="telemetry must be"):
        MPCDDPStrategy(telemetry=value)  # type: ignore[arg-type]
