"""``PredictionFile``: ``Trainer.predict`` writes its predictions to one file in the run's folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

__all__ = ["PredictionFile"]


def _joined(predictions: Sequence[Any]) -> Any:
    """One tensor when every batch's prediction is a tensor of the same trailing shape, else the list."""
    tensors = bool(predictions) and all(isinstance(p, torch.Tensor) and p.dim() > 0 for p in predictions)
    if tensors and len({tuple(p.shape[1:]) for p in predictions}) == 1:
        return torch.cat([p.detach().cpu() for p in predictions])
    return list(predictions)


class PredictionFile(BasePredictionWriter):
    """Write every prediction of an epoch to ``<folder>/predictions.pt`` (``torch.load`` reads it back).

    With one dataloader the file holds one tensor, the batches' predictions concatenated in order (or the
    list of batch outputs when they are not tensors of one shape); with several dataloaders, one such
    entry per dataloader. Under several processes each rank writes ``predictions-rank<N>.pt``.

    Args:
        folder: where to write; ``None`` writes into ``trainer.log_dir`` (the run's folder), or
            ``trainer.default_root_dir`` without a logger.
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.folder = None if folder is None else Path(folder)
        self.path: Path | None = None

    def _target(self, trainer: pl.Trainer) -> Path:
        folder = self.folder or Path(trainer.log_dir or trainer.default_root_dir)
        name = "predictions.pt" if trainer.world_size == 1 else f"predictions-rank{trainer.global_rank}.pt"
        return folder / name

    @override
    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        several = trainer.predict_loop.num_dataloaders > 1  # then ``predictions`` holds one list per dataloader
        content = [_joined(p) for p in predictions] if several else _joined(predictions)
        path = self._target(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(content, path)
        self.path = path
