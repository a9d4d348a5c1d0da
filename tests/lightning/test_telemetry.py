"""MPCTelemetry inside Lightning: every per-block key reaches the loggers, alignment is exact, W&B extras."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import sys
import types
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn

from lightning_mpc import MPCStrategy, MPCTelemetry, partition
from lightning_mpc.core.partition import run_blocks
from lightning_mpc.telemetry.session import TABLE_COLUMNS as _TABLE_COLUMNS
from lightning_mpc.telemetry.session import block_key as _block_key


def block_key(index: int, name: str) -> str:
    return _block_key("mpc", index, name)
from tests.lightning.helpers import Classifier, image_data, loader, mlp_net, small_resnet, trainer, vector_data
from tests.models import auto_heads
from tests.reference import reference_gradients

NUM_BLOCKS = 5  # mlp_net(): 5 blocks, 4 heads
STEP_KEYS = ("loss", "accuracy", "activation_bytes", "grad_norm", "forward_ms", "backward_ms", "alignment")
EPOCH_KEYS = ("loss_epoch", "accuracy_epoch")


def _csv_rows(t: L.Trainer) -> list[dict[str, float]]:
    assert t.logger is not None and t.logger.log_dir is not None
    with open(Path(t.logger.log_dir) / "metrics.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def _values(rows: list[dict[str, float]], key: str) -> list[float]:
    return [row[key] for row in rows if key in row]


def _by_step(rows: list[dict[str, float]]) -> dict[int, dict[str, float]]:
    """One dict per step: the telemetry's per-block row and Lightning's own row of that step, merged."""
    merged: dict[int, dict[str, float]] = {}
    for row in rows:
        merged.setdefault(int(row["step"]), {}).update(row)
    return merged


def _fit(
    module: L.LightningModule,
    tmp_path: Path,
    telemetry: MPCTelemetry | None = None,
    data: Any = None,
    horizon: int = 2,
    **kwargs: Any,
) -> L.Trainer:
    options: dict[str, Any] = {
        "strategy": MPCStrategy(horizon=horizon),
        "logger": CSVLogger(tmp_path, name="csv", version=0),
        "log_every_n_steps": 1,
        "callbacks": [] if telemetry is None else [telemetry],
    }
    t = trainer(**(options | kwargs))
    t.fit(module, loader(data if data is not None else vector_data()))
    return t


# --------------------------------------------------------------------------- every key, every logger
def test_csv_logger_receives_every_per_block_key_with_finite_values(tmp_path: Path) -> None:
    torch.manual_seed(0)
    telemetry = MPCTelemetry(alignment_every=1)
    t = _fit(Classifier(), tmp_path, telemetry, max_epochs=2)
    rows = _csv_rows(t)
    step_rows = [row for row in _by_step(rows).values() if block_key(0, "loss") in row]
    assert len(step_rows) == 16  # 8 batches x 2 epochs, every step logged
    for index in range(NUM_BLOCKS):  # every block with a head, and the last block (the model's own loss)
        for name in STEP_KEYS:
            values = _values(rows, block_key(index, name))
            assert len(values) == 16, f"{block_key(index, name)} logged {len(values)} times"
            assert all(math.isfinite(v) for v in values), block_key(index, name)
        for name in EPOCH_KEYS:
            values = _values(rows, block_key(index, name))
            assert len(values) == 2 and all(math.isfinite(v) for v in values), block_key(index, name)
        assert all(0.0 <= v <= 1.0 for v in _values(rows, block_key(index, "accuracy")))
        assert all(-1.0 - 1e-6 <= v <= 1.0 + 1e-6 for v in _values(rows, block_key(index, "alignment")))
        assert all(v > 0 for v in _values(rows, block_key(index, "activation_bytes")))
        assert all(v >= 0 for v in _values(rows, block_key(index, "grad_norm")))
        assert not _values(rows, block_key(index, "cuda_peak_bytes"))  # CPU run
    # sliding h=2 with 5 blocks: blocks 3 and 4 learn from the final loss, exactly like back-propagation
    for index in (3, 4):
        assert _values(rows, block_key(index, "alignment")) == pytest.approx([1.0] * 16, abs=1e-5)
    # the last block's loss is the loss training_step returned
    assert [r[block_key(4, "loss")] for r in step_rows] == pytest.approx([r["train_loss"] for r in step_rows], rel=1e-6)
    for row in step_rows:
        per_block = [row[block_key(i, "activation_bytes")] for i in range(NUM_BLOCKS)]
        assert 0.9 * row["mpc/peak_activation_bytes"] <= max(per_block) <= row["mpc/peak_activation_bytes"]
        assert row["mpc/backprop_activation_bytes"] == telemetry.backprop_activation_bytes
        ratio = row["mpc/peak_activation_bytes"] / row["mpc/backprop_activation_bytes"]
        assert row["mpc/activation_ratio"] == pytest.approx(ratio)
        assert -1.0 <= row["mpc/alignment"] <= 1.0 + 1e-6
    # the whole-network figures also reach callback_metrics (ModelCheckpoint / EarlyStopping can monitor them)
    for key in ("mpc/alignment", "mpc/peak_activation_bytes", "mpc/activation_ratio"):
        assert key in t.callback_metrics
    # epoch loss: the mean of every step's loss in the epoch
    first_epoch = [row[block_key(0, "loss")] for row in step_rows[:8]]
    assert _values(rows, block_key(0, "loss_epoch"))[0] == pytest.approx(sum(first_epoch) / 8, rel=1e-5)


def test_real_memory_falls_with_the_horizon_and_back_propagation_is_predicted(tmp_path: Path) -> None:
    """Activation-dominated: a batch of 4096 through 12 blocks 64 wide; every figure is allocator bytes."""
    from lightning_mpc.core.realmem import measure_peak
    from lightning_mpc.telemetry import backprop_peak_bytes

    data = vector_data(n=8192)
    ratios = {}
    for horizon in (1, 2, 12):
        torch.manual_seed(0)
        module, telemetry = Classifier(net=mlp_net(width=64, depth=12)), MPCTelemetry()
        t = trainer(strategy=MPCStrategy(horizon=horizon), logger=CSVLogger(tmp_path, name=f"h{horizon}"),
                    log_every_n_steps=1, max_steps=2, callbacks=[telemetry])
        t.fit(module, loader(data, batch_size=4096))
        ratios[horizon] = _values(_csv_rows(t), "mpc/activation_ratio")[-1]
    assert ratios[1] < ratios[2] < ratios[12], ratios
    assert ratios[1] < 0.7 and 0.8 <= ratios[12] <= 1.3, ratios
    # back-propagation's figure: the window model at h = T, within 1.25x of a measured plain step
    torch.manual_seed(0)
    module = Classifier(net=mlp_net(width=64, depth=12))
    x, y = next(iter(loader(data, batch_size=4096)))
    blocks = partition(module.net)
    predicted = backprop_peak_bytes(blocks, x, y, F.cross_entropy, allocate_gradients=True)
    module.zero_grad(set_to_none=True)
    measured = measure_peak(lambda: F.cross_entropy(run_blocks(blocks, x), y).backward())[1].peak_bytes
    assert 0.8 <= predicted / measured <= 1.25


# --------------------------------------------------------------------------- alignment
def _independent_alignment(
    net: nn.Module, heads: nn.ModuleList, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, list[float]]:
    """Cosine of the concatenated horizon-2 gradient (naive reference) with back-propagation's, per block and total."""
    net_mpc, heads_mpc = copy.deepcopy(net), copy.deepcopy(heads)
    blocks = partition(net_mpc)
    mpc, _ = reference_gradients(blocks, list(heads_mpc), x, y, F.cross_entropy, 2, "sliding")
    net_bp = copy.deepcopy(net)
    bp = torch.autograd.grad(F.cross_entropy(net_bp(x), y), list(net_bp.parameters()))
    mpc_blocks = [torch.cat([mpc[id(p)].reshape(-1) for p in block.parameters()]) for block in blocks]
    bp_blocks, position = [], 0
    for block in blocks:
        n = len(list(block.parameters()))
        bp_blocks.append(torch.cat([g.reshape(-1) for g in bp[position : position + n]]))
        position += n

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()))

    return cos(torch.cat(mpc_blocks), torch.cat(bp_blocks)), [cos(a, b) for a, b in zip(mpc_blocks, bp_blocks)]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_alignment_equals_an_independent_computation(tmp_path: Path, accumulate: int) -> None:
    torch.manual_seed(0)
    net, data = mlp_net().double(), vector_data()
    data.tensors = (data.tensors[0].double(), data.tensors[1])
    heads = auto_heads(partition(net), data.tensors[0][:2]).double()
    module = Classifier(net=copy.deepcopy(net), heads=copy.deepcopy(heads))
    batches = list(loader(data))
    x, y = batches[accumulate - 1]  # measured on the window's last micro-batch, parameters as at the window start
    expected_total, expected_blocks = _independent_alignment(net, heads, x, y)

    telemetry = MPCTelemetry(alignment_every=1)
    t = _fit(module, tmp_path, telemetry, data=data, max_steps=1, accumulate_grad_batches=accumulate)
    rows = _csv_rows(t)
    assert _values(rows, "mpc/alignment") == pytest.approx([expected_total], abs=1e-5)
    for index in range(NUM_BLOCKS):
        assert _values(rows, block_key(index, "alignment")) == pytest.approx([expected_blocks[index]], abs=1e-5)
    assert 0.0 < expected_total < 0.9999, "the test needs a horizon that is not back-propagation"


@pytest.mark.parametrize("accumulate", [1, 2])
def test_telemetry_does_not_change_training(tmp_path: Path, accumulate: int) -> None:
    def net() -> nn.Sequential:
        layers = mlp_net()
        layers[1] = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.2), nn.ReLU())
        return layers

    results = []
    for telemetry in (False, True):
        torch.manual_seed(0)
        module = Classifier(net=net())
        t = trainer(
            strategy=MPCStrategy(horizon=2, telemetry=telemetry and MPCTelemetry(alignment_every=1, summary=True)),
            logger=CSVLogger(tmp_path, name=f"run_{telemetry}"),
            log_every_n_steps=1,
            max_epochs=2,
            accumulate_grad_batches=accumulate,
        )
        t.fit(module, loader(vector_data()))
        assert any(isinstance(c, MPCTelemetry) for c in t.callbacks) is telemetry
        results.append(module.state_dict())
    off, on = results
    for key, value in off.items():
        assert torch.equal(value, on[key]), f"{key} differs with telemetry on"


def test_telemetry_follows_a_horizon_changed_during_training(tmp_path: Path) -> None:
    class ChangeHorizon(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_step == 4:
                trainer.strategy.mpc.set_horizon(3)  # what HorizonFinder(epochs=...) does: a new engine

    torch.manual_seed(0)
    t = _fit(Classifier(), tmp_path, max_steps=8, callbacks=[ChangeHorizon(), MPCTelemetry(alignment_every=1)])
    steps = _by_step(_csv_rows(t))
    block_2 = [steps[step][block_key(2, "alignment")] for step in range(8)]
    # 5 blocks: with h = 2 block 2 learns from l_4, with h = 3 from the final loss l_5 (exact alignment)
    assert all(value < 0.999 for value in block_2[:4])
    assert block_2[4:] == pytest.approx([1.0] * 4, abs=1e-5)
    assert all(block_key(0, "activation_bytes") in steps[step] for step in range(8))


def test_bf16_mixed_precision_logs_finite_values(tmp_path: Path) -> None:
    torch.manual_seed(0)
    t = _fit(Classifier(), tmp_path, MPCTelemetry(alignment_every=1), max_steps=3, precision="bf16-mixed")
    steps = _by_step(_csv_rows(t))
    for index in range(NUM_BLOCKS):
        for name in STEP_KEYS:
            values = [row[block_key(index, name)] for row in steps.values()]
            assert len(values) == 3 and all(math.isfinite(v) for v in values), block_key(index, name)
    assert all(0 < row["mpc/activation_ratio"] for row in steps.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runs_log_the_allocator_peaks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    t = _fit(Classifier(), tmp_path, MPCTelemetry(), max_steps=2, accelerator="gpu")
    steps = _by_step(_csv_rows(t))
    for row in steps.values():
        peaks = [row[block_key(index, "activation_bytes")] for index in range(NUM_BLOCKS)]
        assert all(p > 0 for p in peaks) and row["mpc/peak_activation_bytes"] >= max(peaks)
        assert all(row[block_key(index, "forward_ms")] >= 0 for index in range(NUM_BLOCKS))


# --------------------------------------------------------------------------- configuration
def test_strategy_adds_a_default_callback_and_a_user_callback_replaces_it(tmp_path: Path) -> None:
    t = _fit(Classifier(), tmp_path / "default", max_steps=1, enable_checkpointing=True)
    found = [c for c in t.callbacks if isinstance(c, MPCTelemetry)]
    assert len(found) == 1 and found[0].alignment_every == 0
    checkpoint = next(i for i, c in enumerate(t.callbacks) if isinstance(c, ModelCheckpoint))
    assert t.callbacks.index(found[0]) < checkpoint  # before checkpoints, so they can monitor mpc/* metrics

    mine = MPCTelemetry(alignment_every=2)
    t = _fit(Classifier(), tmp_path / "mine", mine, max_steps=1)
    assert [c for c in t.callbacks if isinstance(c, MPCTelemetry)] == [mine]

    configured = MPCTelemetry(memory=False)
    t = trainer(strategy=MPCStrategy(telemetry=configured), max_steps=1)
    t.fit(Classifier(), loader(vector_data()))
    assert [c for c in t.callbacks if isinstance(c, MPCTelemetry)] == [configured]

    t = trainer(strategy=MPCStrategy(telemetry=False), max_steps=1)
    t.fit(Classifier(), loader(vector_data()))
    assert not any(isinstance(c, MPCTelemetry) for c in t.callbacks)

    with pytest.raises(TypeError, match="telemetry must be True, False or an MPCTelemetry.*HINT"):
        MPCStrategy(telemetry="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alignment_every": -1}, "alignment_every must be an integer >= 0"),
        ({"alignment_every": 1.5}, "alignment_every must be an integer >= 0"),
        ({"log_every_n_steps": 0}, "log_every_n_steps must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_explained(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"{message}.*HINT"):
        MPCTelemetry(**kwargs)


def test_cadence_measures_the_first_step_every_n_and_the_last(tmp_path: Path) -> None:
    torch.manual_seed(0)
    t = _fit(Classifier(), tmp_path, MPCTelemetry(log_every_n_steps=4, alignment_every=6), log_every_n_steps=2,
             max_steps=15, max_epochs=2)
    rows = _csv_rows(t)
    measured = [int(row["step"]) for row in rows if block_key(0, "activation_bytes") in row]
    assert measured == [0, 3, 5, 7, 11, 14]  # logged at the step count after optimizer steps 1, 4, 6, 8, 12, 15
    aligned = [int(row["step"]) for row in rows if "mpc/alignment" in row]
    assert aligned == [0, 5, 11]


def test_runs_shorter_than_the_logging_interval_still_get_per_block_metrics(tmp_path: Path) -> None:
    torch.manual_seed(0)
    t = _fit(Classifier(), tmp_path, MPCTelemetry(), log_every_n_steps=50, max_steps=3)
    rows = _csv_rows(t)
    measured = [int(row["step"]) for row in rows if block_key(0, "loss") in row]
    assert measured == [0, 2]  # the first and the last of three steps


def test_without_a_logger_nothing_is_measured() -> None:
    torch.manual_seed(0)
    telemetry = MPCTelemetry(alignment_every=1)
    probe: list[Any] = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            probe.append(trainer.strategy.mpc.engine.observer)

    t = trainer(strategy=MPCStrategy(horizon=2), callbacks=[telemetry, Probe()], max_steps=2)
    t.fit(Classifier(), loader(vector_data()))
    assert probe == [None, None] and not telemetry.active
    assert telemetry.backprop_activation_bytes is None
    assert not any(k.startswith("mpc/") for k in t.callback_metrics)


def test_callback_keeps_no_graph_and_detaches_after_fit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    telemetry = MPCTelemetry(alignment_every=1)
    observers: list[Any] = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            observers.append(trainer.strategy.mpc.engine.observer)
            assert telemetry._recorder is not None and not telemetry._recorder.measuring_memory  # closed each step

    t = _fit(Classifier(), tmp_path, telemetry, max_steps=3, callbacks=[telemetry, Probe()])
    assert len(observers) == 3 and all(o is not None for o in observers)

    def tensors(value: Any, depth: int = 0) -> list[torch.Tensor]:
        if depth > 6:
            return []
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, dict):
            return [t for v in value.values() for t in tensors(v, depth + 1)]
        if isinstance(value, (list, tuple, set)):
            return [t for v in value for t in tensors(v, depth + 1)]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return [t for f in dataclasses.fields(value) for t in tensors(getattr(value, f.name), depth + 1)]
        return []

    held = tensors(vars(telemetry))
    assert all(not t.requires_grad and t.grad_fn is None for t in held)
    assert not telemetry.active and telemetry._capture is None
    assert t.strategy.mpc.engine is None or t.strategy.mpc.engine.observer is None


def test_regression_targets_log_losses_without_accuracy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = vector_data()
    data.tensors = (data.tensors[0], torch.randn(len(data), 3))

    class Regressor(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.mse_loss(self(batch[0]), batch[1])

    t = _fit(Regressor(), tmp_path, MPCTelemetry(), data=data, max_steps=2)
    rows = _csv_rows(t)
    assert len(_values(rows, block_key(0, "loss"))) == 2 and len(_values(rows, block_key(4, "loss"))) == 2
    assert not any("accuracy" in key for row in rows for key in row)


# --------------------------------------------------------------------------- partition summary
def test_partition_summary_is_printed_at_fit_start(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    telemetry = MPCTelemetry(summary=True)
    module = Classifier(net=small_resnet())
    trainer(strategy=MPCStrategy(horizon=2), callbacks=[telemetry], max_steps=1).fit(module, loader(image_data(), 4))
    out = capsys.readouterr().out
    assert "MPC partition: 10 blocks, horizon 2, mode 'sliding'" in out
    rows = telemetry.partition
    assert rows is not None and len(rows) == 10
    assert rows[0].module == "net.conv1..net.maxpool" and rows[0].kind == "BlockSpan(Conv2d..MaxPool2d)"
    assert rows[1].module == "net.layer1.0" and rows[-1].module == "net.avgpool..net.fc"
    assert rows[0].output_shape == (64, 4, 4) and rows[-1].output_shape == (3,)  # 16x16 input
    stem = (module.net.conv1.weight, module.net.bn1.weight, module.net.bn1.bias)
    assert rows[0].parameters == sum(p.numel() for p in stem)
    assert [r.learns_from for r in rows] == [f"l_{min(k + 2, 10)}" for k in range(10)]
    assert all(r.activation_bytes_per_sample and r.activation_bytes_per_sample > 0 for r in rows)
    assert rows[0].head.startswith("feature_map 64->3") and rows[-1].head == "model output"


def test_partition_summary_follows_the_model_summary_setting(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry = MPCTelemetry()
    t = trainer(strategy=MPCStrategy(horizon=2), callbacks=[telemetry], max_steps=1)
    t.fit(Classifier(), loader(vector_data()))
    assert "MPC partition" not in capsys.readouterr().out and telemetry.partition is None  # enable_model_summary=False
    trainer(strategy=MPCStrategy(horizon=2), callbacks=[telemetry], max_steps=1, enable_model_summary=True).fit(
        Classifier(), loader(vector_data())
    )
    assert "MPC partition: 5 blocks" in capsys.readouterr().out


# --------------------------------------------------------------------------- W&B
class _FakeTable:
    def __init__(self, columns: list[str] | None = None, data: list[list[Any]] | None = None, **_: Any) -> None:
        self.columns = columns
        self.data = data


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in ``wandb`` module recording tables and charts (the experiment itself is a MagicMock)."""
    module = types.ModuleType("wandb")
    module.Table = MagicMock(side_effect=_FakeTable)  # type: ignore[attr-defined]
    module.plot = types.SimpleNamespace(  # type: ignore[attr-defined]
        line_series=MagicMock(return_value="line-chart"), bar=MagicMock(return_value="bar-chart")
    )
    module.__path__ = []  # type: ignore[attr-defined]
    sdk, lib, run = (types.ModuleType(name) for name in ("wandb.sdk", "wandb.sdk.lib", "wandb.wandb_run"))
    lib.RunDisabled = type("RunDisabled", (), {})  # type: ignore[attr-defined]
    run.Run = type("Run", (), {})  # type: ignore[attr-defined]
    for name, value in (("wandb", module), ("wandb.sdk", sdk), ("wandb.sdk.lib", lib), ("wandb.wandb_run", run)):
        monkeypatch.setitem(sys.modules, name, value)
    return module


def test_wandb_extras_with_a_mocked_wandb(tmp_path: Path, fake_wandb: types.ModuleType) -> None:
    torch.manual_seed(0)
    logger = WandbLogger(save_dir=tmp_path)
    experiment = MagicMock()
    logger._experiment = experiment
    t = trainer(
        strategy=MPCStrategy(horizon=2),
        logger=logger,
        log_every_n_steps=2,
        max_epochs=2,
        callbacks=[MPCTelemetry(alignment_every=2)],
    )
    t.fit(Classifier(), loader(vector_data()))

    defined = {
        (c.args[0], c.kwargs.get("step_metric"), c.kwargs.get("summary"))
        for c in experiment.define_metric.call_args_list
    }
    assert ("mpc/*", "trainer/global_step", None) in defined
    assert (block_key(0, "loss"), "trainer/global_step", "min,last") in defined
    assert (block_key(3, "accuracy"), "trainer/global_step", "max,last") in defined
    assert (block_key(4, "loss_epoch"), "epoch", None) in defined

    configs = [c.args[0]["mpc"] for c in experiment.config.update.call_args_list if "mpc" in c.args[0]]
    assert len(configs) == 1
    config = configs[0]
    assert config["horizon"] == 2 and config["mode"] == "sliding" and config["num_blocks"] == NUM_BLOCKS
    assert config["learns_from"] == [2, 3, 4, 5, 5]
    assert [row["module"] for row in config["partition"]] == [f"net.{i}" for i in range(NUM_BLOCKS)]
    assert [head["kind"] for head in config["heads"]] == ["vector"] * 4

    logged = [c.args[0] for c in experiment.log.call_args_list]
    tables = [entry["mpc/blocks"] for entry in logged if "mpc/blocks" in entry]
    assert len(tables) == 2  # one per epoch
    for table in tables:
        assert table.columns == _TABLE_COLUMNS and len(table.data) == NUM_BLOCKS
        for epoch, block, module, loss, accuracy, act, alignment, *rest in table.data:
            assert math.isfinite(loss) and 0 <= accuracy <= 1, (loss, accuracy)
            assert act > 0 and -1 <= alignment <= 1 + 1e-6, (act, alignment)
    assert [entry["mpc/blocks"].data[0][0] for entry in logged if "mpc/blocks" in entry] == [0, 1]
    assert any("mpc/partition" in entry for entry in logged)
    assert any(entry.get("mpc/charts/block_loss") == "line-chart" for entry in logged)
    assert any(entry.get("mpc/charts/activation_bytes") == "bar-chart" for entry in logged)
    assert all("trainer/global_step" in entry for entry in logged)
    line = fake_wandb.plot.line_series.call_args_list[-1].kwargs
    assert line["keys"] == [f"block_{i:02d}" for i in range(NUM_BLOCKS)]
    # measured on step 1 and every 2nd of 16 steps: 9 points
    assert len(line["ys"]) == NUM_BLOCKS and all(len(ys) == len(line["xs"]) == 9 for ys in line["ys"])
    assert any(block_key(2, "loss") in entry for entry in logged)  # the ordinary metrics arrive through log_metrics


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep W&B offline, quiet and inside ``tmp_path``; every variable is restored after the test."""
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
    }.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def test_wandb_offline_run_writes_tables_and_summary(wandb_env: Path) -> None:
    pytest.importorskip("wandb")
    torch.manual_seed(0)
    logger = WandbLogger(offline=True, save_dir=wandb_env, project="lightning-mpc-test")
    try:
        t = trainer(
            strategy=MPCStrategy(horizon=2),
            logger=logger,
            log_every_n_steps=2,
            max_epochs=2,
            callbacks=[MPCTelemetry(alignment_every=2)],
        )
        t.fit(Classifier(), loader(vector_data()))
        experiment = logger.experiment
        assert experiment.config["mpc"]["horizon"] == 2
        summary = experiment.summary
        for index in range(NUM_BLOCKS):
            for name in STEP_KEYS:
                value = summary[block_key(index, name)]
                # keys with define_metric(summary="min,last") and the like hold one value per aggregate
                values = [value] if isinstance(value, (int, float)) else list(dict(value).values())
                assert values and all(math.isfinite(v) for v in values), block_key(index, name)
        assert set(dict(summary[block_key(0, "loss")])) == {"min", "last"}
    finally:
        logger.experiment.finish()
    runs = list((wandb_env / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = sorted((runs[0] / "files" / "media" / "table" / "mpc").glob("blocks_*.table.json"))
    assert len(tables) == 2
    content = json.loads(tables[-1].read_text())
    assert content["columns"] == _TABLE_COLUMNS and len(content["data"]) == NUM_BLOCKS
    assert list((runs[0] / "files" / "media" / "table" / "mpc" / "charts").glob("block_loss_table_*.table.json"))


def test_wandb_disabled_mode_trains_without_errors(wandb_env: Path, recwarn: pytest.WarningsRecorder) -> None:
    pytest.importorskip("wandb")
    logger = WandbLogger(mode="disabled", save_dir=wandb_env)
    try:
        trainer(strategy=MPCStrategy(horizon=2), logger=logger, log_every_n_steps=1, max_steps=3).fit(
            Classifier(), loader(vector_data())
        )
    finally:
        logger.experiment.finish()
    assert not [w for w in recwarn if "MPCTelemetry" in str(w.message)]
    assert not (wandb_env / "wandb").exists() or not list((wandb_env / "wandb").glob("offline-run-*"))
