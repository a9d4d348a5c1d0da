"""``lightning-mpc``: the command line, a ``LightningCLI`` for every recipe.

Usage::

    lightning-mpc fit --config recipes/mnist_mlp.yaml                      # the recipe as written
    lightning-mpc fit --config recipes/mnist_mlp.yaml --trainer.strategy auto   # back-propagation
    lightning-mpc fit --config recipes/mnist_mlp.yaml --trainer.strategy mpc    # MPC, h = 1
    lightning-mpc fit --config recipes/mnist_mlp.yaml \\
        --trainer.strategy lightning_mpc.MPCStrategy --trainer.strategy.horizon 2 --trainer.strategy.mode block
    lightning-mpc fit --config recipes/mnist_mlp.yaml --data.name mnist          # full MNIST (downloads)
    lightning-mpc test --config recipes/mnist_mlp.yaml --ckpt_path path/to.ckpt
    lightning-mpc fit --print_config --config recipes/cifar10_resnet18.yaml  # the resolved configuration

The subcommands are Lightning's ``fit``, ``validate``, ``test`` and ``predict``; ``--model`` and ``--data``
accept any ``LightningModule`` / ``LightningDataModule`` by class path (default: the MNIST MLP recipe's
classes). ``--trainer.strategy`` accepts the registered names ``mpc`` (and ``mpc_ddp`` when available), any
Lightning strategy name, or a ``class_path`` with ``init_args``.

Logging: when the configuration sets no ``trainer.logger``, runs log to Weights & Biases if the
environment variable ``WANDB_API_KEY`` is set (project ``$WANDB_PROJECT``, default ``lightning-mpc``) and
to a ``CSVLogger`` under ``<trainer.default_root_dir>/lightning_logs/<recipe name>`` otherwise. An explicit
``--trainer.logger`` (for example ``WandbLogger`` with ``--trainer.logger.offline true``) always wins;
``--trainer.logger false`` disables logging.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.strategies import Strategy

import lightning_mpc  # noqa: F401  (registers strategy="mpc" and the other built-in names)
from lightning_mpc.recipes.data import DatasetUnavailableError

__all__ = ["MPCLightningCLI", "default_logger", "main", "run_cli", "strategy_from_class_path"]

WANDB_KEY_VARIABLE = "WANDB_API_KEY"
"""When this environment variable is set and no logger is configured, runs log to W&B."""
DEFAULT_PROJECT = "lightning-mpc"
"""W&B project when ``WANDB_PROJECT`` is not set."""


def default_logger(save_dir: str | os.PathLike[str], name: str) -> Logger:
    """The logger of a run whose configuration names none.

    Args:
        save_dir: the run's root folder (``trainer.default_root_dir``).
        name: the run's name (the recipe's file name, or the model's class name).

    Returns:
        A ``WandbLogger`` when ``WANDB_API_KEY`` is set (project ``$WANDB_PROJECT`` or ``lightning-mpc``,
        run name and group ``name``, local files under ``save_dir/lightning_logs``), else a ``CSVLogger``
        writing ``save_dir/lightning_logs/<name>/version_<n>/metrics.csv``. Checkpoints go to the logger's
        folder.
    """
    root = Path(save_dir) / "lightning_logs"
    if os.environ.get(WANDB_KEY_VARIABLE):
        root.mkdir(parents=True, exist_ok=True)
        return WandbLogger(
            project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), name=name, group=name, save_dir=str(root)
        )
    return CSVLogger(save_dir=str(root), name=name)


def strategy_from_class_path(class_path: str) -> Strategy:
    """Instantiate a strategy class named by its import path, with its default arguments.

    Args:
        class_path: ``package.module.Class``, for example ``lightning_mpc.MPCStrategy``.

    Raises:
        ValueError: if the path does not import or does not name a ``Strategy`` subclass.
    """
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"--trainer.strategy {class_path!r} is neither a registered strategy name nor an importable class "
            f"({type(error).__name__}: {error}). HINT: use a name such as mpc or auto, or a class path such as "
            "lightning_mpc.MPCStrategy (add --trainer.strategy.horizon 2 to set its arguments)."
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(
            f"--trainer.strategy {class_path!r} names {cls!r}, which is not a lightning Strategy. "
            "HINT: use lightning_mpc.MPCStrategy or a registered name such as mpc."
        )
    return cls()


class MPCLightningCLI(LightningCLI):
    """``LightningCLI`` with the recipes' defaults and the W&B-or-CSV logger choice.

    Model and data are in subclass mode: ``--model`` / ``--data`` take a class path (or the class name
    of anything importable) with ``init_args``; they default to
    :class:`~lightning_mpc.recipes.MLPClassifier` and :class:`~lightning_mpc.recipes.MNISTData` (the
    bundled digits), so ``lightning-mpc fit`` alone trains the MNIST MLP offline with back-propagation.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Default model and data: the MNIST MLP recipe on the bundled digits."""
        parser.set_defaults(
            {
                "model": {"class_path": "lightning_mpc.recipes.MLPClassifier"},
                "data": {"class_path": "lightning_mpc.recipes.MNISTData"},
            }
        )

    def run_name(self) -> str:
        """The recipe's file name (the last ``--config``), else the model's class name in lower case."""
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        paths = [str(path) for path in (config.get("config") or []) if str(path)]
        if paths:
            return Path(paths[-1]).stem
        class_path = getattr(config.get("model"), "class_path", None) or "model"
        return str(class_path).rsplit(".", 1)[-1].lower()

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Instantiate the Trainer, giving it :func:`default_logger` when no logger is configured.

        A strategy given as a bare class path (``--trainer.strategy lightning_mpc.MPCStrategy``, which the
        parser keeps as a string when no ``init_args`` follow) is instantiated with its defaults.
        """
        trainer_config = self._get(self.config_init, "trainer", default={})
        strategy = kwargs.get("strategy", trainer_config.get("strategy"))
        if isinstance(strategy, str) and "." in strategy:
            kwargs["strategy"] = strategy_from_class_path(strategy)
        logger = kwargs.get("logger", trainer_config.get("logger"))
        if logger is None or logger is True:
            root = kwargs.get("default_root_dir", trainer_config.get("default_root_dir")) or os.getcwd()
            kwargs["logger"] = default_logger(root, self.run_name())
        return super().instantiate_trainer(**kwargs)


def run_cli(args: Sequence[str] | None = None, *, run: bool = True) -> MPCLightningCLI:
    """Parse ``args``, build the model, data and Trainer, and run the subcommand.

    Args:
        args: arguments without the program name (default: ``sys.argv[1:]``); with ``run=True`` the first
            is the subcommand (``fit``, ``validate``, ``test`` or ``predict``).
        run: run the subcommand; ``False`` only builds the objects (no subcommand in ``args`` then).

    Returns:
        The CLI, with ``.model``, ``.datamodule`` and ``.trainer``.
    """
    return MPCLightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "description": "lightning-mpc: train a recipe (recipes/*.yaml) with horizon-truncated (MPC) training or "
            "back-propagation. Example: lightning-mpc fit --config recipes/mnist_mlp.yaml",
        },
        args=None if args is None else list(args),
        run=run,
    )


def main(args: Sequence[str] | None = None) -> int:
    """Run the ``lightning-mpc`` command line.

    Args:
        args: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        ``0`` on success, ``1`` when a dataset is missing and cannot be downloaded (the message, printed to
        standard error, says what to download and which flag to use instead). Bad arguments exit with
        status 2 and a usage message, as every ``LightningCLI`` does.
    """
    try:
        run_cli(args)
    except DatasetUnavailableError as error:
        print(f"lightning-mpc: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
