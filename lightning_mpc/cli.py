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
    lightning-mpc report runs/mnist_mlp/lightning_logs/mnist_mlp/version_0   # per-block figure, PNG + HTML
    lightning-mpc dashboard --entity E --project P                          # the W&B saved view

The subcommands are Lightning's ``fit``, ``validate``, ``test`` and ``predict``; ``--model`` and ``--data``
accept any ``LightningModule`` / ``LightningDataModule`` by class path (default: the MNIST MLP recipe's
classes). ``--trainer.strategy`` accepts the registered names ``mpc`` (and ``mpc_ddp`` when available), any
Lightning strategy name, or a ``class_path`` with ``init_args``; ``--trainer.strategy mpc
--trainer.strategy.horizon 2`` sets the arguments of a registered name too. A bad strategy argument prints
the plugin's message with its ``HINT`` and exits with status 2, without a traceback.

Two more subcommands sit next to Lightning's: ``report RUN_DIR`` draws the per-block figure of a run's CSV
logs or offline W&B run into a PNG and one self-contained HTML page (:mod:`lightning_mpc.report`), and
``dashboard`` creates the W&B saved view for runs of this plugin (``--export FILE`` writes it offline).

Logging: when the configuration sets no ``trainer.logger``, runs log to Weights & Biases if the
environment variable ``WANDB_API_KEY`` is set (project ``$WANDB_PROJECT``, default ``lightning-mpc``) and
to a ``CSVLogger`` under ``<trainer.default_root_dir>/lightning_logs/<recipe name>`` otherwise. An explicit
``--trainer.logger`` (for example ``WandbLogger`` with ``--trainer.logger.offline true``) always wins;
``--trainer.logger false`` disables logging. A ``WandbLogger`` given without ``save_dir`` writes under
``<trainer.default_root_dir>/lightning_logs`` too, not in the working folder (unless ``WANDB_DIR`` is set).

Run folders: ``validate``, ``test`` and ``predict`` with ``--ckpt_path`` pointing into a run's
``checkpoints/`` folder log into that run's folder (``<run>/validate``, ``<run>/test``, ``<run>/predict``)
instead of starting a new version folder; ``predict`` writes ``predictions.pt`` into its folder
(:class:`~lightning_mpc.lightning.PredictionFile`).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.strategies import Strategy, StrategyRegistry

import lightning_mpc  # noqa: F401  (registers strategy="mpc" and the other built-in names)
from lightning_mpc.lightning.predictions import PredictionFile
from lightning_mpc.recipes.data import DatasetUnavailableError

__all__ = [
    "CLIConfigurationError",
    "MPCLightningCLI",
    "check_strategy_name",
    "dashboard_main",
    "default_logger",
    "main",
    "named_strategy_arguments",
    "report_main",
    "run_cli",
    "run_folder_of",
    "strategy_from_class_path",
]

WANDB_KEY_VARIABLE = "WANDB_API_KEY"
"""When this environment variable is set and no logger is configured, runs log to W&B."""
DEFAULT_PROJECT = "lightning-mpc"
"""W&B project when ``WANDB_PROJECT`` is not set."""
RUN_SUBCOMMANDS = ("validate", "test", "predict")
"""Subcommands that log into the run folder of the checkpoint they load (``<run>/<subcommand>``)."""
_STRATEGY = "--trainer.strategy"


class CLIConfigurationError(ValueError):
    """A configuration the command line cannot run; ``main`` prints it without a traceback."""


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


def run_folder_of(ckpt_path: str | os.PathLike[str] | None) -> Path | None:
    """The run folder a checkpoint belongs to: ``<run>`` for ``<run>/checkpoints/<file>.ckpt``, else ``None``.

    That is where Lightning's ``ModelCheckpoint`` writes by default, below the logger's version folder
    (``lightning_logs/<name>/version_0``, or ``<project>/<run id>`` for W&B).
    """
    if ckpt_path is None or str(ckpt_path) in ("last", "best", "hpc", "registry"):
        return None
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" and path.parent.parent.is_dir() else None


def _run_folder_logger(folder: Path, subcommand: str, name: str) -> Logger:
    """The logger of ``validate``/``test``/``predict`` in an existing run folder: files in ``<run>/<subcommand>``."""
    if os.environ.get(WANDB_KEY_VARIABLE):
        save_dir = folder / subcommand
        save_dir.mkdir(parents=True, exist_ok=True)
        project = os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
        return WandbLogger(project=project, name=f"{name}-{subcommand}", group=name, save_dir=str(save_dir))
    return CSVLogger(save_dir=str(folder), name="", version=subcommand)


def check_strategy_name(name: str) -> None:
    """Refuse a ``--trainer.strategy`` name that Lightning does not know, suggesting the closest ones.

    Raises:
        CLIConfigurationError: for a name that is neither ``auto`` nor registered.
    """
    known = StrategyRegistry.available_strategies()
    if name.lower() == "auto" or name.lower() in known:
        return
    close = difflib.get_close_matches(name.lower(), ["auto", *known], n=3)
    guess = f" Did you mean {' or '.join(close)}?" if close else ""
    raise CLIConfigurationError(
        f"{_STRATEGY} {name!r} is not a registered strategy name.{guess} HINT: use mpc (horizon-truncated "
        "training, --trainer.strategy.horizon 2 sets its horizon), auto (back-propagation), another registered "
        "Lightning name such as ddp, or a class path such as lightning_mpc.MPCStrategy."
    )


def named_strategy_arguments(args: Sequence[str]) -> list[str]:
    """Let a registered name of this plugin take arguments: ``--trainer.strategy mpc --trainer.strategy.horizon 2``.

    A strategy given by name is a plain string to the parser, which then refuses nested arguments; when
    ``--trainer.strategy.<argument>`` follows a name registered by this plugin (``mpc``, ``mpc_ddp``, ...), the
    name is replaced by its class path and the registry's own arguments (``start_method`` of ``mpc_ddp``).
    Other arguments are returned unchanged.
    """
    args = list(args)
    if not any(arg.startswith(_STRATEGY + ".") for arg in args):
        return args
    given = {arg.split("=", 1)[0] for arg in args if arg.startswith(_STRATEGY + ".")}
    for position, arg in enumerate(args):
        if arg == _STRATEGY and position + 1 < len(args):
            span, name = 2, args[position + 1]
        elif arg.startswith(_STRATEGY + "="):
            span, name = 1, arg.split("=", 1)[1]
        else:
            continue
        # StrategyRegistry.get() would instantiate the strategy; the entry holds its class and arguments
        entry = StrategyRegistry[name.lower()] if name.lower() in StrategyRegistry else None  # noqa: SIM401
        cls = entry.get("strategy") if isinstance(entry, dict) else None
        if not (isinstance(cls, type) and cls.__module__.startswith("lightning_mpc")):
            return args
        replacement = [_STRATEGY, f"{cls.__module__}.{cls.__qualname__}"]
        for key, value in (entry.get("init_params") or {}).items():
            if f"{_STRATEGY}.{key}" not in given:
                replacement += [f"{_STRATEGY}.{key}", value if isinstance(value, str) else json.dumps(value)]
        return [*args[:position], *replacement, *args[position + span :]]
    return args


def _hint_message(error: BaseException) -> str | None:
    """The plugin's own message inside a configuration error: the lines that carry a ``HINT:``.

    jsonargparse wraps an exception raised while instantiating a class (``MPCStrategy(horizon=0)``) into a
    long union-type report; the plugin's message is the line with the ``HINT``.
    """
    lines = [line.strip() for line in str(error).splitlines() if "HINT:" in line]
    lines = [line.removeprefix("- ") for line in lines]  # jsonargparse's bullets
    return "\n".join(dict.fromkeys(lines)) or None


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

    def _subcommand_config(self) -> Any:
        return self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Give a ``WandbLogger`` configured without ``save_dir`` the run root, as :func:`default_logger` does."""
        trainer = self._subcommand_config().get("trainer") or {}
        loggers = trainer.get("logger")
        root = Path(trainer.get("default_root_dir") or os.getcwd()) / "lightning_logs"
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            class_path = str(getattr(logger, "class_path", ""))
            init_args = getattr(logger, "init_args", None)
            if not class_path.endswith(".WandbLogger") or init_args is None or os.environ.get("WANDB_DIR"):
                continue
            if init_args.get("save_dir") in (None, ".", "") and init_args.get("dir") is None:
                root.mkdir(parents=True, exist_ok=True)
                init_args["save_dir"] = str(root)

    def instantiate_classes(self) -> None:
        """Instantiate model, data and Trainer; a configuration error with a ``HINT`` becomes one clear message.

        Raises:
            CLIConfigurationError: for a bad strategy name, or a class (the strategy, a logger, ...) whose
                arguments this plugin refuses with a ``HINT``.
        """
        try:
            super().instantiate_classes()
        except CLIConfigurationError:
            raise
        except (ValueError, TypeError) as error:
            message = _hint_message(error)
            if message is None:
                raise
            raise CLIConfigurationError(message) from error

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Instantiate the Trainer, giving it :func:`default_logger` when no logger is configured.

        A strategy given as a bare class path (``--trainer.strategy lightning_mpc.MPCStrategy``, which the
        parser keeps as a string when no ``init_args`` follow) is instantiated with its defaults; an unknown
        strategy name is refused with the closest known names. ``validate``, ``test`` and ``predict`` with a
        checkpoint of an earlier run log into that run's folder; ``predict`` writes its predictions there.
        """
        trainer_config = self._get(self.config_init, "trainer", default={})
        strategy = kwargs.get("strategy", trainer_config.get("strategy"))
        if isinstance(strategy, str) and "." in strategy:
            kwargs["strategy"] = strategy_from_class_path(strategy)
        elif isinstance(strategy, str):
            check_strategy_name(strategy)
        logger = kwargs.get("logger", trainer_config.get("logger"))
        if logger is None or logger is True:
            folder = run_folder_of(self._subcommand_config().get("ckpt_path"))
            if folder is not None and self.subcommand in RUN_SUBCOMMANDS:
                kwargs["logger"] = _run_folder_logger(folder, str(self.subcommand), self.run_name())
            else:
                root = kwargs.get("default_root_dir", trainer_config.get("default_root_dir")) or os.getcwd()
                kwargs["logger"] = default_logger(root, self.run_name())
        if self.subcommand == "predict":
            callbacks = trainer_config.get("callbacks") or []
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            if not any(isinstance(c, BasePredictionWriter) for c in callbacks):
                kwargs["callbacks"] = [*callbacks, PredictionFile()]
        return super().instantiate_trainer(**kwargs)


@contextlib.contextmanager
def _program_arguments(args: Sequence[str]) -> Iterator[None]:
    """``sys.argv[1:]`` replaced by ``args`` for the duration (the program name is kept)."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "lightning-mpc", *args]
    try:
        yield
    finally:
        sys.argv = saved


def run_cli(args: Sequence[str] | None = None, *, run: bool = True) -> MPCLightningCLI:
    """Parse ``args``, build the model, data and Trainer, and run the subcommand.

    Args:
        args: arguments without the program name (default: ``sys.argv[1:]``); with ``run=True`` the first
            is the subcommand (``fit``, ``validate``, ``test`` or ``predict``).
        run: run the subcommand; ``False`` only builds the objects (no subcommand in ``args`` then).

    Returns:
        The CLI, with ``.model``, ``.datamodule`` and ``.trainer``.
    """
    if args is None:  # LightningCLI warns when it is given arguments and sys.argv holds some too
        with _program_arguments(named_strategy_arguments(sys.argv[1:])):
            return _build_cli(None, run)
    return _build_cli(named_strategy_arguments(args), run)


def _build_cli(args: Sequence[str] | None, run: bool) -> MPCLightningCLI:
    return MPCLightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "description": "lightning-mpc: train a recipe (recipes/*.yaml) with horizon-truncated (MPC) training or "
            "back-propagation. Example: lightning-mpc fit --config recipes/mnist_mlp.yaml. Also: lightning-mpc "
            "report RUN_DIR (per-block figure, PNG and HTML) and lightning-mpc dashboard --entity E --project P "
            "(W&B saved view); add --help to either.",
        },
        args=None if args is None else list(args),
        run=run,
    )


def _report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-mpc report",
        description="Draw the per-block figure (loss, memory, alignment, time per block) of a run into a PNG and one "
        "self-contained HTML page, from its Lightning CSV logs or an offline W&B run folder. No network.",
    )
    parser.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="a CSVLogger version folder (metrics.csv), a folder above one, or a W&B run folder "
        "(wandb/offline-run-<date>-<id>)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR's run folder/report)")
    parser.add_argument(
        "--prefix",
        action="append",
        default=None,
        help="metric prefix to draw, repeatable (default: every prefix with <prefix>/block_NN/<name> series)",
    )
    parser.add_argument("--title", default=None, help="the page's and the figures' title")
    return parser


def report_main(args: Sequence[str]) -> int:
    """``lightning-mpc report RUN_DIR [--out DIR] [--prefix P] [--title T]``.

    See :func:`lightning_mpc.report.write_report`.

    Returns:
        ``0`` on success, ``1`` when the folder holds no run or no per-block series (the message says why).
    """
    from lightning_mpc.report import NoRunError, write_report

    options = _report_parser().parse_args(list(args))
    try:
        report = write_report(options.run_dir, options.out, prefixes=options.prefix, title=options.title)
    except (NoRunError, ValueError) as error:
        print(f"lightning-mpc report: error: {error}", file=sys.stderr)
        return 1
    for prefix, table in report.tables.items():
        print(f"{prefix}/block_* in {report.run.path}:\n\n{table}\n")
    figures = ", ".join(str(path) for path in report.figures.values())
    print(f"Wrote {report.html} and {figures}")
    return 0


def _dashboard_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-mpc dashboard",
        description="Create the W&B saved view for runs of this plugin (sections: per-block loss, memory, alignment, "
        "time, the partition table), built with wandb-workspaces. --export writes its spec without the network.",
    )
    entity = os.environ.get("WANDB_ENTITY")
    parser.add_argument("--entity", default=entity, required=entity is None, help="W&B entity (default: $WANDB_ENTITY)")
    parser.add_argument(
        "--project",
        default=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
        help=f"W&B project (default: $WANDB_PROJECT or {DEFAULT_PROJECT})",
    )
    parser.add_argument("--prefix", default="mpc", help="metric prefix of the rule (default: %(default)s)")
    parser.add_argument("--name", default=None, help="the view's name")
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the view's JSON spec to FILE and do not save it",
    )
    return parser


def dashboard_main(args: Sequence[str]) -> int:
    """``lightning-mpc dashboard --entity E --project P [--prefix mpc] [--name N] [--export FILE]``.

    Returns:
        ``0`` on success; ``1`` when ``wandb-workspaces`` is missing or W&B refuses the view (the message has a
        ``HINT``).
    """
    from lightning_mpc.report.wandb_view import build_workspace, workspace_spec

    options = _dashboard_parser().parse_args(list(args))
    try:
        workspace = build_workspace(options.entity, options.project, prefix=options.prefix, name=options.name)
    except ModuleNotFoundError as error:
        print(f"lightning-mpc dashboard: error: {error}", file=sys.stderr)
        return 1
    if options.export is not None:
        options.export.parent.mkdir(parents=True, exist_ok=True)
        options.export.write_text(json.dumps(workspace_spec(workspace), indent=2) + "\n", encoding="utf-8")
        print(f"Wrote {options.export} (the view {workspace.name!r} for {options.entity}/{options.project}; not saved)")
        return 0
    try:
        workspace.save()
    except Exception as error:  # noqa: BLE001  (network, authentication and permission errors all end here)
        print(
            f"lightning-mpc dashboard: error: W&B did not save the view ({type(error).__name__}: {error}). HINT: run "
            "`wandb login` (or set WANDB_API_KEY), check --entity and --project, or use --export FILE offline.",
            file=sys.stderr,
        )
        return 1
    print(f"Saved the view {workspace.name!r}: {workspace.url}")
    return 0


TOOLS: dict[str, Callable[[Sequence[str]], int]] = {"report": report_main, "dashboard": dashboard_main}
"""The subcommands that are not Lightning's: they run without building a model or a Trainer."""


def main(args: Sequence[str] | None = None) -> int:
    """Run the ``lightning-mpc`` command line.

    Args:
        args: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        ``0`` on success, ``1`` when a dataset is missing and cannot be downloaded (the message, printed to
        standard error, says what to download and which flag to use instead), ``2`` for a configuration the
        plugin refuses (the message with its ``HINT``, no traceback). Bad arguments exit with status 2 and a
        usage message, as every ``LightningCLI`` does. ``report`` and ``dashboard`` return their own status.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:])
    try:
        run_cli(args)
    except DatasetUnavailableError as error:
        print(f"lightning-mpc: error: {error}", file=sys.stderr)
        return 1
    except CLIConfigurationError as error:
        print(f"lightning-mpc: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
