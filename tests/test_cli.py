"""The ``lightning-mpc`` command line: strategy forms, logger choice, subcommands, missing data."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import tomllib
import torch
import torchvision
from lightning.pytorch.loggers import CSVLogger, WandbLogger

import lightning_mpc
from lightning_mpc import MPCStrategy
from lightning_mpc.cli import main, named_strategy_arguments, run_cli, strategy_from_class_path
from lightning_mpc.recipes import MLPClassifier, MNISTData
from lightning_mpc.report import write_report
from tests.report.conftest import offline_wandb_environment

ROOT = Path(__file__).resolve().parents[1]
MNIST_RECIPE = str(ROOT / "recipes" / "mnist_mlp.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-mpc"])  # LightningCLI warns when sys.argv carries pytest's flags
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)


def _build(*args: str):
    """Parse and instantiate without running a subcommand."""
    return run_cli(["--trainer.accelerator", "cpu", "--trainer.devices", "1", *args], run=False)


def test_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["lightning-mpc"] == "lightning_mpc.cli:main"
    assert any(dep.startswith("jsonargparse[signatures]") for dep in project["dependencies"])


def test_defaults_are_the_mnist_recipe_with_back_propagation() -> None:
    cli = _build()
    assert isinstance(cli.model, MLPClassifier) and cli.model.hparams["num_blocks"] == 8
    assert isinstance(cli.datamodule, MNISTData) and cli.datamodule.name == "bundled"
    assert not isinstance(cli.trainer.strategy, MPCStrategy)


@pytest.mark.parametrize(
    ("args", "horizon", "mode"),
    [
        (["--trainer.strategy", "mpc"], 1, "sliding"),
        (["--trainer.strategy", "lightning_mpc.MPCStrategy"], 1, "sliding"),
        (
            [
                "--trainer.strategy",
                "lightning_mpc.MPCStrategy",
                "--trainer.strategy.horizon",
                "3",
                "--trainer.strategy.mode",
                "block",
            ],
            3,
            "block",
        ),
        (['--trainer.strategy={"class_path": "lightning_mpc.MPCStrategy", "init_args": {"horizon": 2}}'], 2, "sliding"),
        (["--config", MNIST_RECIPE], 4, "sliding"),
        (["--config", MNIST_RECIPE, "--trainer.strategy.horizon", "2"], 2, "sliding"),
    ],
    ids=["name", "bare-class-path", "class-path-init-args", "json", "recipe", "recipe-override"],
)
def test_strategy_forms(args: list[str], horizon: int, mode: str) -> None:
    strategy = _build(*args).trainer.strategy
    assert type(strategy) is MPCStrategy
    assert (strategy.horizon, strategy.mode) == (horizon, mode)


def test_strategy_name_mpc_ddp() -> None:
    ddp = getattr(lightning_mpc, "MPCDDPStrategy", None)
    if ddp is None:
        pytest.skip("lightning_mpc.MPCDDPStrategy does not exist yet")
    assert isinstance(_build("--trainer.strategy", "mpc_ddp").trainer.strategy, ddp)


def test_recipe_back_to_back_propagation() -> None:
    assert not isinstance(_build("--config", MNIST_RECIPE, "--trainer.strategy", "auto").trainer.strategy, MPCStrategy)


def test_bad_strategy_class_path_has_a_hint() -> None:
    with pytest.raises(ValueError, match="HINT"):
        strategy_from_class_path("lightning_mpc.NoSuchStrategy")
    with pytest.raises(ValueError, match="not a lightning Strategy"):
        strategy_from_class_path("torch.nn.Linear")
    with pytest.raises((SystemExit, ValueError), match="horizon|2"):  # a horizon that is not an integer
        _build("--trainer.strategy", "lightning_mpc.MPCStrategy", "--trainer.strategy.horizon", "two")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trainer.strategy", "mcp"], "'mcp' is not a registered strategy name. Did you mean mpc?"),
        (["--trainer.strategy", "mpc", "--trainer.strategy.horizon", "0"], "horizon must be >= 1, got 0."),
        (["--trainer.strategy=mpc", "--trainer.strategy.horizon=0"], "horizon must be >= 1, got 0."),
        (["--trainer.strategy", "lightning_mpc.MPCStrategy", "--trainer.strategy.horizon", "0"], "horizon must be"),
        (["--trainer.strategy", "lightning_mpc.NoSuchStrategy"], "neither a registered strategy name nor"),
    ],
    ids=["misspelled-name", "name-with-bad-horizon", "equals-form", "class-path-bad-horizon", "bad-class-path"],
)
def test_invalid_strategy_prints_the_message_and_its_hint(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["fit", *args, "--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu", *QUIET])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lightning-mpc: error: ") and message in err[-1] and "HINT:" in err[-1]
    assert len(err) <= 3 and not any("Traceback" in line for line in err)  # at most Lightning's seed line above


def test_a_registered_name_takes_init_args() -> None:
    strategy = _build("--trainer.strategy", "mpc", "--trainer.strategy.horizon", "3").trainer.strategy
    assert type(strategy) is MPCStrategy and strategy.horizon == 3
    rewritten = named_strategy_arguments(["fit", "--trainer.strategy", "mpc_ddp", "--trainer.strategy.horizon", "2"])
    assert rewritten == [
        "fit",
        "--trainer.strategy",
        "lightning_mpc.lightning.ddp.MPCDDPStrategy",
        "--trainer.strategy.start_method",
        "popen",
        "--trainer.strategy.horizon",
        "2",
    ]
    unchanged = ["fit", "--trainer.strategy", "ddp", "--trainer.strategy.x", "1"]  # not this plugin's name
    assert named_strategy_arguments(unchanged) == unchanged
    assert named_strategy_arguments(["fit", "--trainer.strategy", "mpc"]) == ["fit", "--trainer.strategy", "mpc"]


def test_default_logger_is_csv_under_the_recipe_name(tmp_path: Path) -> None:
    cli = _build("--config", MNIST_RECIPE, "--trainer.default_root_dir", str(tmp_path / "runs"))
    logger = cli.trainer.logger
    assert isinstance(logger, CSVLogger)
    assert Path(logger.log_dir).parent == tmp_path / "runs" / "lightning_logs" / "mnist_mlp"


def test_wandb_api_key_selects_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "recipes-test")
    cli = _build("--config", MNIST_RECIPE, "--trainer.default_root_dir", str(tmp_path))
    logger = cli.trainer.logger
    assert isinstance(logger, WandbLogger)  # built only; no run is started until something is logged
    assert logger._project == "recipes-test" and logger._wandb_init["name"] == "mnist_mlp"
    assert Path(logger.save_dir) == tmp_path / "lightning_logs"


def test_explicit_logger_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    cli = _build("--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "mine"))
    assert isinstance(cli.trainer.logger, CSVLogger) and Path(cli.trainer.logger.root_dir).parent == tmp_path / "mine"
    assert _build("--trainer.logger", "false").trainer.logger is None


def test_fit_then_validate_test_predict_from_the_checkpoint(tmp_path: Path) -> None:
    tiny = ["--config", MNIST_RECIPE, "--data.limit", "64", "--data.batch_size", "32", *QUIET]
    tiny += ["--trainer.default_root_dir", str(tmp_path)]
    fit = run_cli(["fit", *tiny, "--trainer.max_epochs", "1", "--trainer.strategy.horizon", "2"])
    assert fit.trainer.global_step == 2
    (checkpoint,) = (tmp_path / "lightning_logs" / "mnist_mlp").glob("version_0/checkpoints/*.ckpt")
    assert (checkpoint.parent.parent / "config.yaml").is_file()
    assert (checkpoint.parent.parent / "metrics.csv").is_file()
    trained = fit.model.state_dict()

    run = checkpoint.parent.parent
    fit_metrics = (run / "metrics.csv").read_text(encoding="utf-8")

    for subcommand, metric in (("validate", "val/acc"), ("test", "test/acc")):
        cli = run_cli([subcommand, *tiny, "--ckpt_path", str(checkpoint)])
        assert 0.0 <= float(cli.trainer.callback_metrics[metric]) <= 1.0
        for key, value in cli.model.state_dict().items():  # the heads were rebuilt and restored too
            torch.testing.assert_close(value, trained[key], msg=key)
        # the run's folder is reused: its files in <run>/<subcommand>, the fit's own files untouched
        assert Path(cli.trainer.log_dir) == run / subcommand
        assert metric in (run / subcommand / "metrics.csv").read_text(encoding="utf-8")
        assert (run / subcommand / "config.yaml").is_file()
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # no new version folder
    assert (run / "metrics.csv").read_text(encoding="utf-8") == fit_metrics
    assert "max_epochs: 1" in (run / "config.yaml").read_text(encoding="utf-8")  # fit's config, not overwritten

    cli = run_cli(["predict", *tiny, "--ckpt_path", str(checkpoint)])
    predictions = torch.cat(cli.trainer.predict_loop.predictions)
    assert predictions.shape == (64,) and predictions.dtype == torch.int64
    assert int(predictions.min()) >= 0 and int(predictions.max()) <= 9
    written = torch.load(run / "predict" / "predictions.pt")  # the prediction writer's file, in the run folder
    assert torch.equal(written, predictions)


def test_predict_without_a_run_writes_into_its_own_folder(tmp_path: Path) -> None:
    tiny = ["--config", MNIST_RECIPE, "--data.limit", "32", "--data.batch_size", "16", *QUIET]
    cli = run_cli(["predict", *tiny, "--trainer.default_root_dir", str(tmp_path)])
    (written,) = (tmp_path / "lightning_logs" / "mnist_mlp").glob("version_*/predictions.pt")
    assert torch.equal(torch.load(written), torch.cat(cli.trainer.predict_loop.predictions))


def test_an_explicit_wandb_logger_writes_under_the_run_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    offline_wandb_environment(monkeypatch, tmp_path / "home")  # WandbLogger(offline=True) sets WANDB_MODE
    args = ["fit", "--config", MNIST_RECIPE, "--data.limit", "64", "--data.batch_size", "16", *QUIET]
    args += ["--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1", "--trainer.strategy.horizon", "2"]
    args += ["--trainer.default_root_dir", str(tmp_path / "runs")]
    args += ["--trainer.logger", "WandbLogger", "--trainer.logger.offline", "true"]
    args += ["--trainer.logger.project", "cli-test"]
    cli = run_cli(args)
    cli.trainer.logger.experiment.finish()
    assert not (tmp_path / "wandb").exists()  # the working folder (tmp_path) stays clean
    (run,) = (tmp_path / "runs" / "lightning_logs" / "wandb").glob("offline-run-*")
    assert list((tmp_path / "runs" / "lightning_logs" / "cli-test").glob("*/checkpoints/*.ckpt"))
    report = write_report(run, tmp_path / "report")  # the offline run reads back into the report
    assert report.run.kind == "wandb" and report.figures["mpc"].is_file()
    assert len(report.tables["mpc"].splitlines()) == 2 + 8


def test_missing_mnist_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "fit",
            "--config",
            MNIST_RECIPE,
            "--data.name",
            "mnist",
            "--data.download",
            "false",
            "--data.data_dir",
            str(tmp_path / "nowhere"),
            "--trainer.fast_dev_run",
            "1",
            *QUIET,
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in err
    assert "train-images-idx3-ubyte" in err and "--data.name bundled" in err and "HINT" in err


def _offline(*_: object, **__: object) -> None:
    raise URLError("[Errno -3] Temporary failure in name resolution")


def test_failed_download_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _offline)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", _offline)
    data_dir = str(tmp_path / "data")
    code = main(
        [
            "fit",
            "--config",
            MNIST_RECIPE,
            "--data.name",
            "mnist",
            "--data.data_dir",
            data_dir,
            "--trainer.fast_dev_run",
            "1",
            *QUIET,
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "could not be downloaded (URLError" in err and "--data.name bundled" in err

    code = main(
        [
            "fit",
            "--config",
            str(ROOT / "recipes" / "cifar10_resnet18.yaml"),
            "--data.data_dir",
            data_dir,
            "--trainer.fast_dev_run",
            "1",
            "--trainer.accelerator",
            "cpu",
            *QUIET,
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "cifar-10-python.tar.gz" in err and str(tmp_path / "data" / "cifar-10-batches-py") in err
    assert "--data.fake true" in err and "HINT" in err
