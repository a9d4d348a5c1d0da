"""Where the strategies find inputs before training: the training dataloader and the module's own forward."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from lightning_mpc.core.hooks import first_block_input
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.partition import run_blocks
from lightning_mpc.lightning.compat import stage_dataloader_source, training_dataloader_source
from lightning_mpc.lightning.mixin import batch_input

__all__ = [
    "EXAMPLE_SAMPLES",
    "call_forward",
    "evaluation_dataloader",
    "example_block_input",
    "example_input",
    "training_dataloader",
]

EXAMPLE_SAMPLES = 2
"""Samples of the first batch used for dry runs (shapes, per-sample memory)."""


def training_dataloader(trainer: pl.Trainer, module: pl.LightningModule, purpose: str) -> Iterable[Any]:
    """The training dataloader the Trainer will use (from ``fit``'s arguments, the datamodule or the module).

    Args:
        trainer: the Trainer being set up.
        module: the LightningModule, for the error message.
        purpose: what the batches are for, completing "MPC needs training batches to ...".

    Raises:
        RuntimeError: if there is none.
    """
    dataloader = training_dataloader_source(trainer)
    if dataloader is None:
        raise RuntimeError(
            f"MPC needs training batches to {purpose}, but {type(module).__name__} has no training dataloader. "
            "HINT: pass train_dataloaders (or a datamodule) to trainer.fit, or set example_input_array."
        )
    return dataloader


def evaluation_dataloader(trainer: pl.Trainer, module: pl.LightningModule, purpose: str) -> Iterable[Any]:
    """The dataloader of the running ``validate``, ``test`` or ``predict`` (the first one when there are several).

    Raises:
        RuntimeError: if there is none.
    """
    dataloader = stage_dataloader_source(trainer)
    if isinstance(dataloader, (list, tuple)):
        dataloader = dataloader[0] if dataloader else None
    if dataloader is None:
        raise RuntimeError(
            f"The rule needs a batch to {purpose}, but {type(module).__name__} has no dataloader for "
            f"{trainer.state.fn}. HINT: pass dataloaders (or a datamodule), or set example_input_array."
        )
    return dataloader


def example_input(
    trainer: pl.Trainer, module: pl.LightningModule, purpose: str, samples: int | None = EXAMPLE_SAMPLES
) -> Any:
    """``module.example_input_array``, or the input of the first batch cut to ``samples`` (``None``: all): the
    training batches when fitting, the running stage's otherwise."""
    example = module.example_input_array
    if example is not None:
        return example
    fitting = trainer.state.fn in (None, TrainerFn.FITTING)
    loader = (training_dataloader if fitting else evaluation_dataloader)(trainer, module, purpose)
    batch = next(iter(loader))
    x = batch_input(batch)
    return x[:samples] if isinstance(x, Tensor) and samples is not None else x


def call_forward(module: pl.LightningModule, blocks: Sequence[nn.Module], example: Any) -> Any:
    """Run the module's forward on ``example`` as Lightning does (``*tuple``, ``**dict``), or the blocks if it has none."""
    if type(module).forward is pl.LightningModule.forward:
        return run_blocks(blocks, example)  # no forward of its own: training_step calls the network directly
    if isinstance(example, Mapping):
        return module(**example)
    if isinstance(example, tuple):
        return module(*example)
    return module(example)


def example_block_input(
    trainer: pl.Trainer, module: pl.LightningModule, blocks: Sequence[nn.Module], device: torch.device, purpose: str
) -> Tensor:
    """Block 0's input when the module's forward runs on the whole first training batch (or ``example_input_array``).

    Moved to ``device`` and converted by the precision plugin as in training, computed without grad; the forward
    stops at block 0 and buffers are restored.
    """
    example = move_data_to_device(example_input(trainer, module, purpose, samples=None), device)
    example = trainer.precision_plugin.convert_input(example)
    with torch.no_grad(), preserved_buffers([module]):
        return first_block_input(blocks, lambda: call_forward(module, blocks, example))
