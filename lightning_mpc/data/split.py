"""A LightningDataModule with a training split and an evaluation split, and its four dataloaders."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["SplitDataModule"]


class SplitDataModule(L.LightningDataModule):
    """A data module with a training split and an evaluation split (which validates, tests and predicts).

    Subclasses set ``train_set`` and ``eval_set`` in ``setup`` and ``batch_size``, ``num_workers`` and
    ``seed`` in ``__init__``.
    """

    train_set: Dataset | None = None
    eval_set: Dataset | None = None
    batch_size: int
    num_workers: int = 0
    seed: int = 0

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}: call setup() before asking for a dataloader. HINT: let the Trainer call it."
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (seeded)."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Evaluation batches, in order."""
        return self._loader(self.eval_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Evaluation batches, in order."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Evaluation batches, in order."""
        return self.val_dataloader()
