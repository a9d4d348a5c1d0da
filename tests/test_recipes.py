"""Every YAML recipe in ``recipes/`` runs for a few batches on tiny data through ``lightning-mpc fit``.

Nothing is downloaded: MNIST uses the bundled digits (or full-MNIST files written here from them),
CIFAR-10 uses ``--data.fake true``, the deep linear recipe generates its data.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lightning_mpc import MPCStrategy, PinTStrategy, RuleStrategy
from lightning_mpc.cli import MPCLightningCLI, main, run_cli
from lightning_mpc.data import load_bundled_mnist
from lightning_mpc.recipes import (
    CIFAR10Data,
    ClassificationData,
    DeepLinear,
    DropoutMLP,
    MLPClassifier,
    MNISTData,
    ResNetClassifier,
    cifar_resnet,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
STRATEGIES = {
    "lightning_mpc.MPCStrategy": MPCStrategy,
    "lightning_mpc.PinTStrategy": PinTStrategy,
    "lightning_mpc.RuleStrategy": RuleStrategy,
}
"""The strategies recipes use, by class path."""

# Per recipe: flags that make its data tiny and offline (a new recipe must add an entry here).
TINY = {
    "mnist_mlp": ["--data.limit", "16", "--data.batch_size", "8"],
    "cifar10_resnet18": [
        "--data.fake",
        "true",
        "--data.fake_size",
        "4",
        "--data.batch_size",
        "2",
        "--data.num_workers",
        "0",
    ],
    "deep_linear": ["--data.train_size", "32", "--data.eval_size", "16", "--data.batch_size", "8"],
    **{recipe: ["--data.limit", "16", "--data.batch_size", "8"] for recipe in ("ff_mnist", "sff_resnet18_mnist")},
    "sff_mobilenet_v3_mnist": ["--data.limit", "16", "--data.batch_size", "8"],
    "pepita_mnist": ["--data.limit", "16", "--data.batch_size", "8"],
    "pepita_cifar10": [
        "--data.fake",
        "true",
        "--data.fake_size",
        "4",
        "--data.batch_size",
        "2",
        "--data.num_workers",
        "0",
    ],
    "pint_mnist_resmlp": ["--data.limit", "16", "--data.batch_size", "8"],
    **{
        recipe: ["--data.length", "12", "--data.train_size", "16", "--data.eval_size", "8", "--data.batch_size", "8"]
        for recipe in ("tp_temporal_order", "tp_adding")
    },
}


class GradientRecorder(Callback):
    """Names of the parameters with a non-zero gradient at each optimizer step."""

    def __init__(self) -> None:
        self.steps: list[set[str]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.steps.append(
            {n for n, p in pl_module.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
        )


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-mpc"])  # LightningCLI warns when sys.argv carries pytest's flags


def _fit(recipe: Path, tmp_path: Path, *extra: str) -> MPCLightningCLI:
    return run_cli(
        [
            "fit",
            "--trainer.callbacks+=tests.test_recipes.GradientRecorder",
            "--config",
            str(recipe),
            "--trainer.fast_dev_run",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            *TINY[recipe.stem],
            *extra,
        ]
    )


def _assert_trained(cli: MPCLightningCLI, strategy_type: type | None) -> None:
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    if strategy_type is not None:
        assert isinstance(cli.trainer.strategy, strategy_type)
    # timm-style: at every step, every parameter (blocks and, under MPC, the local heads) has a gradient
    (recorder,) = [c for c in cli.trainer.callbacks if isinstance(c, GradientRecorder)]
    names = {name for name, _ in cli.model.named_parameters()}
    assert len(recorder.steps) == 2
    for step in recorder.steps:
        assert step == names, f"no gradient for {sorted(names - step)}"


def test_every_recipe_has_tiny_overrides() -> None:
    expected = {"mnist_mlp", "cifar10_resnet18", "deep_linear", "pint_mnist_resmlp", "tp_temporal_order", "tp_adding"}
    expected |= {"ff_mnist", "sff_resnet18_mnist", "sff_mobilenet_v3_mnist"}
    assert {r.stem for r in RECIPES} >= expected
    missing = [r.name for r in RECIPES if r.stem not in TINY]
    assert not missing, f"add tiny-data flags for {missing} to TINY in tests/test_recipes.py"


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_smoke_run(recipe: Path, tmp_path: Path) -> None:
    config = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    strategy = config["trainer"]["strategy"]
    strategy_type = STRATEGIES[strategy["class_path"]]
    cli = _fit(recipe, tmp_path)
    _assert_trained(cli, strategy_type)
    if strategy_type is MPCStrategy:
        assert cli.trainer.strategy.horizon == strategy["init_args"]["horizon"]
        assert len(cli.model.mpc_heads) == len(cli.model.mpc_blocks) - 1
    elif strategy_type is PinTStrategy:
        assert cli.trainer.strategy.pint.iterations == strategy["init_args"]["iterations"]
    else:  # another rule than MPC, configured in the recipe
        rule = cli.trainer.strategy.rule
        assert f"lightning_mpc.{type(rule).__name__}" == strategy["init_args"]["rule"]["class_path"]
        for name, value in strategy["init_args"]["rule"]["init_args"].items():
            assert getattr(rule, name) == value, name


@pytest.mark.parametrize(
    "recipe", [r for r in RECIPES if r.stem in ("mnist_mlp", "pepita_mnist", "ff_mnist", "sff_resnet18_mnist")], ids=lambda r: r.stem
)
def test_recipe_with_back_propagation(recipe: Path, tmp_path: Path) -> None:
    cli = _fit(recipe, tmp_path, "--trainer.strategy", "auto")
    _assert_trained(cli, None)
    assert not isinstance(cli.trainer.strategy, MPCStrategy)
    assert not hasattr(cli.model, "mpc_heads")


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.stem.startswith("tp_")], ids=lambda r: r.stem)
def test_tp_recipe_with_back_propagation_through_time(recipe: Path, tmp_path: Path) -> None:
    cli = _fit(recipe, tmp_path, "--trainer.strategy", "auto", "--model.lr", "1e-3", "--model.momentum", "0.9")
    _assert_trained(cli, None)
    assert not isinstance(cli.trainer.strategy, RuleStrategy)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format of the MNIST distribution files."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def fake_full_mnist(data_dir: Path, count: int = 32) -> None:
    """Lay out ``count`` bundled digits as torchvision's MNIST raw files, so ``--data.name mnist`` needs no network."""
    images, labels = load_bundled_mnist()
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, sl in (("train", slice(0, count)), ("t10k", slice(count, 2 * count))):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[sl])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[sl])


def test_mnist_recipe_on_full_mnist_files(tmp_path: Path) -> None:
    fake_full_mnist(tmp_path / "data", count=32)
    recipe = ROOT / "recipes" / "mnist_mlp.yaml"
    cli = _fit(recipe, tmp_path, "--data.name", "mnist", "--data.data_dir", str(tmp_path / "data"))
    _assert_trained(cli, MPCStrategy)
    assert isinstance(cli.datamodule, MNISTData) and cli.datamodule.name == "mnist"
    assert len(cli.datamodule.train_set) == 16  # --data.limit 16 of the 32 written
    x, y = cli.datamodule.train_set[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and int(y) == int(load_bundled_mnist()[1][0])


def test_pepita_recipe_switches_to_cifar10_with_one_flag(tmp_path: Path) -> None:
    recipe = ROOT / "recipes" / "pepita_mnist.yaml"
    cli = _fit(recipe, tmp_path, "--data.name", "cifar10", "--data.fake", "true")
    _assert_trained(cli, RuleStrategy)
    assert isinstance(cli.datamodule, ClassificationData) and cli.datamodule.dims == (3, 32, 32)
    assert isinstance(cli.model, DropoutMLP) and cli.model.net[0][0].in_features == 3072
    assert cli.model.hparams["in_features"] == 3072  # checkpoints rebuild the same network
    assert cli.model.pepita_feedback.weight().shape == (3072, 10)


def test_pepita_recipe_without_cifar10_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "fit",
            "--config",
            str(ROOT / "recipes" / "pepita_mnist.yaml"),
            "--data.name",
            "cifar10",
            "--data.download",
            "false",
            "--data.data_dir",
            str(tmp_path / "nowhere"),
            "--trainer.fast_dev_run",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in err and "cifar-10-python.tar.gz" in err
    assert "HINT" in err


def test_classification_data_and_dropout_mlp_validate_arguments() -> None:
    with pytest.raises(ValueError, match="HINT"):
        ClassificationData(name="svhn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HINT"):
        ClassificationData(name="bundled", fake=True)
    with pytest.raises(ValueError, match="HINT"):
        DropoutMLP(hidden=[])
    with pytest.raises(ValueError, match="HINT"):
        DropoutMLP(dropout=1.0)
    with pytest.raises(RuntimeError, match="HINT"):
        DropoutMLP()(torch.zeros(1, 784))
    raw = ClassificationData(normalize=False, limit=4)
    raw.setup()
    x, _ = raw.train_set[0]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    model = DropoutMLP(in_features=784, bias=True)
    bound = (6.0 / 784) ** 0.5
    assert float(model.net[0][0].weight.abs().max()) <= bound and not model.net[0][0].bias.any()


def test_cifar_resnet_has_the_cifar_stem() -> None:
    model = cifar_resnet("resnet18", num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="HINT"):
        cifar_resnet("vgg16")


def test_recipe_classes_validate_arguments() -> None:
    with pytest.raises(ValueError, match="HINT"):
        MLPClassifier(num_blocks=1)
    with pytest.raises(ValueError, match="HINT"):
        DeepLinear(depth=1)
    with pytest.raises(ValueError, match="HINT"):
        MNISTData(name="emnist")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HINT"):
        CIFAR10Data(batch_size=0)
    assert ResNetClassifier().hparams["arch"] == "resnet18"
