"""The bundled MNIST digits as numpy arrays and as a ``LightningDataModule``.

The file ``mnist10k.npz`` ships inside the package (provenance and licence in ``README.md`` beside it),
so everything here works offline. The split is fixed: the first 8,000 digits train, the last 2,000
evaluate.
"""

from __future__ import annotations

import importlib.resources

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_mpc.data.split import SplitDataModule

__all__ = [
    "EVAL_SIZE",
    "MNIST_MEAN",
    "MNIST_STD",
    "NUM_CLASSES",
    "TRAIN_SIZE",
    "BundledMNIST",
    "load_bundled_mnist",
]

_RESOURCE = "mnist10k.npz"
TRAIN_SIZE = 8_000
"""The first ``TRAIN_SIZE`` digits of the file form the training split."""
EVAL_SIZE = 2_000
"""The last ``EVAL_SIZE`` digits of the file form the evaluation split."""
MNIST_MEAN = 0.1307
"""Mean of the 0..1 pixel intensities used for normalisation (the usual full-MNIST figure)."""
MNIST_STD = 0.3081
"""Standard deviation of the 0..1 pixel intensities used for normalisation."""
NUM_CLASSES = 10


def load_bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Load the 10,000 bundled MNIST digits.

    Returns:
        ``(images, labels)``: ``images`` of shape ``(10000, 28, 28)`` and ``labels`` of shape
        ``(10000,)``, both ``uint8``, in file order (shuffled once, no split implied).

    Raises:
        FileNotFoundError: if the package was installed without its data file.
    """
    resource = importlib.resources.files(__package__).joinpath(_RESOURCE)
    if not resource.is_file():
        raise FileNotFoundError(
            f"The bundled data file {_RESOURCE} is missing from the installed package ({resource}). "
            "HINT: reinstall lightning-mpc; the file is package data of lightning_mpc.data."
        )
    with importlib.resources.as_file(resource) as path, np.load(path) as archive:
        images = np.asarray(archive["images"])
        labels = np.asarray(archive["labels"])
    return images, labels


def _to_tensors(images: np.ndarray, labels: np.ndarray, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Scale to 0..1, normalise (if asked), add the channel axis; labels become ``int64``."""
    x = torch.from_numpy(images).to(torch.float32).div_(255.0)
    if normalize:
        x = x.sub_(MNIST_MEAN).div_(MNIST_STD)
    return x.unsqueeze(1).contiguous(), torch.from_numpy(labels).to(torch.int64)


class BundledMNIST(SplitDataModule):
    """The bundled MNIST digits: first 8,000 for training, last 2,000 for evaluation.

    Each item is ``(image, label)``: a ``float32`` tensor of shape ``(1, 28, 28)`` normalised with mean
    0.1307 and standard deviation 0.3081 (or left in 0..1 with ``normalize=False``), and an ``int64`` scalar. The evaluation split backs
    ``val_dataloader``, ``test_dataloader`` and ``predict_dataloader``.

    Args:
        batch_size: samples per batch.
        num_workers: ``DataLoader`` worker processes (the whole set lives in memory; 0 is fastest).
        limit: if set, use only the first ``limit`` digits of each split (tiny smoke runs).
        shuffle_seed: seed of the training loader's own shuffling generator, so that the sample order
            does not depend on the global random state (runs that consume random numbers differently
            before training, e.g. to build local heads, still see the same batches).
        normalize: normalise with mean 0.1307 and standard deviation 0.3081; ``False`` keeps the 0..1 pixel
            intensities (as the PEPITA papers' code does).

    Raises:
        ValueError: for a non-positive ``batch_size`` or ``limit`` or a negative ``num_workers``.

    Example::

        dm = BundledMNIST(batch_size=128)
        dm.setup("fit")
        images, labels = next(iter(dm.train_dataloader()))  # (128, 1, 28, 28) float32, (128,) int64
    """

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        limit: int | None = None,
        shuffle_seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"BundledMNIST: batch_size must be at least 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"BundledMNIST: num_workers must be 0 or more, got {num_workers}.")
        if limit is not None and limit < 1:
            raise ValueError(
                f"BundledMNIST: limit must be a positive number of digits, got {limit}. HINT: pass None for all."
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit = limit
        self.shuffle_seed = shuffle_seed
        self.normalize = normalize
        self.seed = shuffle_seed  # SplitDataModule's training-loader generator
        self.num_classes = NUM_CLASSES
        self.dims = (1, 28, 28)
        self.train_set: TensorDataset | None = None
        self.eval_set: TensorDataset | None = None

    def _take(self, size: int) -> int:
        return size if self.limit is None else min(size, self.limit)

    def setup(self, stage: str | None = None) -> None:
        """Load the file (once) and build the two splits.

        Args:
            stage: Lightning's stage; both splits are built for every stage.
        """
        if self.train_set is not None and self.eval_set is not None:
            return
        images, labels = load_bundled_mnist()
        x, y = _to_tensors(images, labels, self.normalize)
        train_end = self._take(TRAIN_SIZE)
        eval_start = len(x) - EVAL_SIZE
        eval_end = eval_start + self._take(EVAL_SIZE)
        self.train_set = TensorDataset(x[:train_end], y[:train_end])
        self.eval_set = TensorDataset(x[eval_start:eval_end], y[eval_start:eval_end])
