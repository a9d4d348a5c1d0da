"""Long-sequence tasks for recurrent networks, generated offline: temporal order, adding, sequential MNIST.

The synthetic tasks are those of Hochreiter & Schmidhuber (1997) as used to compare target propagation with
back-propagation through time (Manchev & Spratling 2020; Roulet & Harchaoui, arXiv 2112.01453):

* **Temporal order** (4 classes, 6 input symbols, one-hot): every step shows one of the distractors
  ``a, b, c, d``, except two steps that show ``X`` or ``Y``, the first in ``[L/10, 2L/10)``, the second in
  ``[5L/10, 6L/10)``. The class is the ordered pair: ``XX, XY, YX, YY``. Chance is 25 %.
* **Adding** (regression, 2 input channels): channel 0 holds values drawn uniformly in ``[0, 1)``, channel 1
  marks two steps, the first in ``[0, L/10)``, the second in ``[L/10, L/2)``. The target is the mean of the
  two marked values. A constant prediction of 1/2 has a mean squared error of 1/24 (the variance of the
  mean of two uniform values), the baseline to beat.
* **Sequential MNIST**: the bundled digits read one pixel per step (784 steps), or ``chunk`` pixels per step
  (``784 / chunk`` steps), optionally in a fixed random pixel order (permuted MNIST).

Every generator is deterministic in the ``torch.Generator`` it is given.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_mpc.data.mnist import EVAL_SIZE, NUM_CLASSES, TRAIN_SIZE, load_bundled_mnist
from lightning_mpc.data.split import SplitDataModule

__all__ = [
    "ADDING_CONSTANT_MSE",
    "MIN_LENGTH",
    "MNIST_PIXELS",
    "SequenceData",
    "Task",
    "adding",
    "sequential_mnist",
    "temporal_order",
]

Task = Literal["temporal_order", "adding", "sequential_mnist"]
MIN_LENGTH = 10
"""The shortest synthetic sequence: the tasks place their symbols in tenths of the length."""
ADDING_CONSTANT_MSE = 1.0 / 24.0
"""The adding task's mean squared error of the constant prediction 1/2."""
MNIST_PIXELS = 28 * 28
TEMPORAL_ORDER_SYMBOLS = 6
"""Input features of the temporal-order task: ``X, Y, a, b, c, d`` one-hot."""
TEMPORAL_ORDER_CLASSES = 4


def _check_count(owner: str, num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"{owner}: num_samples must be a positive integer, got {num_samples!r}. HINT: pass 1000.")


def _check_length(owner: str, length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < MIN_LENGTH:
        raise ValueError(
            f"{owner}: sequences of length {length!r} are too short; the task places its symbols in tenths of the "
            f"length. HINT: use length >= {MIN_LENGTH} (the paper uses 60 and 120 for temporal order, 30 for adding)."
        )


def temporal_order(num_samples: int, length: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Samples of the temporal-order task.

    Args:
        num_samples: sequences to draw.
        length: steps per sequence (at least 10).
        generator: the random source (default: the global one).

    Returns:
        ``(x, y)``: one-hot inputs ``(num_samples, length, 6)`` (``float32``; symbols ``X, Y, a, b, c, d``) and
        classes ``(num_samples,)`` (``int64``; ``2 * first + second`` with ``X = 0``, ``Y = 1``).
    """
    _check_count("temporal_order", num_samples)
    _check_length("temporal_order", length)
    rows = torch.arange(num_samples)
    symbols = torch.randint(2, TEMPORAL_ORDER_SYMBOLS, (num_samples, length), generator=generator)
    first_at = torch.randint(length // 10, 2 * length // 10, (num_samples,), generator=generator)
    second_at = torch.randint(5 * length // 10, 6 * length // 10, (num_samples,), generator=generator)
    first = torch.randint(0, 2, (num_samples,), generator=generator)
    second = torch.randint(0, 2, (num_samples,), generator=generator)
    symbols[rows, first_at] = first
    symbols[rows, second_at] = second
    x = F.one_hot(symbols, TEMPORAL_ORDER_SYMBOLS).to(torch.float32)
    return x, 2 * first + second


def adding(num_samples: int, length: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Samples of the adding task.

    Args:
        num_samples: sequences to draw.
        length: steps per sequence (at least 10).
        generator: the random source (default: the global one).

    Returns:
        ``(x, y)``: inputs ``(num_samples, length, 2)`` (values, markers) and targets ``(num_samples, 1)``, the
        mean of the two marked values (both ``float32``).
    """
    _check_count("adding", num_samples)
    _check_length("adding", length)
    rows = torch.arange(num_samples)
    values = torch.rand(num_samples, length, generator=generator)
    first_at = torch.randint(0, length // 10, (num_samples,), generator=generator)
    second_at = torch.randint(length // 10, length // 2, (num_samples,), generator=generator)
    markers = torch.zeros(num_samples, length)
    markers[rows, first_at] = 1.0
    markers[rows, second_at] = 1.0
    y = 0.5 * (values[rows, first_at] + values[rows, second_at])
    return torch.stack([values, markers], dim=-1), y.unsqueeze(-1)


def sequential_mnist(images: Tensor, *, chunk: int = 1, permutation: Tensor | None = None) -> Tensor:
    """Digits as pixel sequences: ``(n, 28, 28)`` images to ``(n, 784 / chunk, chunk)`` sequences in ``[0, 1]``.

    Args:
        images: ``uint8`` (0..255) or floating-point (0..1) images, ``(n, 28, 28)``.
        chunk: pixels per step; it must divide 784 (1, 2, 4, 7, 8, 14, 16, 28, ...).
        permutation: a fixed order of the 784 pixels (permuted MNIST), or ``None`` for row-major order.

    Raises:
        ValueError: for a ``chunk`` that does not divide 784, or a permutation of another size.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or MNIST_PIXELS % chunk:
        raise ValueError(
            f"sequential_mnist: chunk={chunk!r} does not divide the {MNIST_PIXELS} pixels of a digit into whole steps. "
            "HINT: use a divisor of 784 such as 1 (784 steps), 4 (196), 7 (112), 16 (49) or 28 (28 steps, one row)."
        )
    flat = images.reshape(images.shape[0], -1)
    if flat.shape[1] != MNIST_PIXELS:
        raise ValueError(
            f"sequential_mnist expects 28 x 28 images, got shape {tuple(images.shape)}. HINT: pass MNIST digits."
        )
    pixels = flat.to(torch.float32) / 255.0 if not images.is_floating_point() else flat.to(torch.float32)
    if permutation is not None:
        if permutation.shape != (MNIST_PIXELS,):
            raise ValueError(
                f"sequential_mnist: the permutation must hold {MNIST_PIXELS} indices, got shape "
                f"{tuple(permutation.shape)}. HINT: torch.randperm(784)."
            )
        pixels = pixels[:, permutation]
    return pixels.reshape(images.shape[0], MNIST_PIXELS // chunk, chunk)


class SequenceData(SplitDataModule):
    """Temporal order, adding or sequential MNIST as a ``LightningDataModule`` (training and evaluation splits).

    The synthetic tasks draw ``train_size`` training and ``eval_size`` evaluation sequences once, from two
    generators seeded from ``seed``; sequential MNIST uses the bundled digits (the first 8,000 train, the last
    2,000 evaluate; ``train_size`` / ``eval_size`` keep the first ones of each split). Evaluation batches
    validate, test and predict.

    Args:
        task: ``"temporal_order"``, ``"adding"`` or ``"sequential_mnist"``.
        length: steps per sequence of the synthetic tasks (at least 10); sequential MNIST has ``784 / chunk``.
        chunk: sequential MNIST's pixels per step (a divisor of 784).
        permute: sequential MNIST in a fixed random pixel order (drawn from ``seed``).
        train_size: training sequences (synthetic default 20,000; MNIST default all 8,000).
        eval_size: evaluation sequences (synthetic default 1,000; MNIST default all 2,000).
        batch_size: sequences per batch (the paper: 20 for the synthetic tasks, 16 for MNIST).
        num_workers: ``DataLoader`` workers.
        seed: seed of the data and of the training loader's shuffling.

    Attributes:
        input_size: features per step (6, 2 or ``chunk``).
        output_size: classes, or 1 for the adding task's regression.
        sequence_length: steps per sequence.

    Example::

        data = SequenceData("temporal_order", length=60)
        model = RecurrentTask(input_size=data.input_size, output_size=data.output_size)
    """

    def __init__(
        self,
        task: Task = "temporal_order",
        length: int = 60,
        chunk: int = 1,
        permute: bool = False,
        train_size: int | None = None,
        eval_size: int | None = None,
        batch_size: int = 20,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if task not in get_args(Task):
            raise ValueError(
                f"SequenceData: unknown task {task!r}. HINT: use 'temporal_order', 'adding' or 'sequential_mnist'."
            )
        if task == "sequential_mnist":
            sequential_mnist(torch.zeros(1, 28, 28), chunk=chunk)  # validates chunk
        else:
            _check_length(f"SequenceData({task!r})", length)
        for name, value in (("train_size", train_size), ("eval_size", eval_size)):
            if value is not None:
                _check_count(f"SequenceData {name}", value)
        if batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"SequenceData: batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}. "
                "HINT: pass --data.batch_size 20 --data.num_workers 0."
            )
        self.save_hyperparameters()
        self.task: Task = task
        self.length = length
        self.chunk = chunk
        self.permute = permute
        synthetic = task != "sequential_mnist"
        self.train_size = train_size if train_size is not None else (20_000 if synthetic else TRAIN_SIZE)
        self.eval_size = eval_size if eval_size is not None else (1_000 if synthetic else EVAL_SIZE)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.input_size = {"temporal_order": TEMPORAL_ORDER_SYMBOLS, "adding": 2}.get(task, chunk)
        self.output_size = {"temporal_order": TEMPORAL_ORDER_CLASSES, "adding": 1}.get(task, NUM_CLASSES)
        self.sequence_length = length if synthetic else MNIST_PIXELS // chunk
        self.train_set: TensorDataset | None = None
        self.eval_set: TensorDataset | None = None

    def _synthetic(self, size: int, stream: int) -> TensorDataset:
        generator = torch.Generator().manual_seed(2 * self.seed + stream)
        make = temporal_order if self.task == "temporal_order" else adding
        return TensorDataset(*make(size, self.length, generator=generator))

    def _mnist(self) -> tuple[TensorDataset, TensorDataset]:
        images, labels = load_bundled_mnist()
        generator = torch.Generator().manual_seed(self.seed)
        permutation = torch.randperm(MNIST_PIXELS, generator=generator) if self.permute else None
        x = sequential_mnist(torch.from_numpy(images), chunk=self.chunk, permutation=permutation)
        y = torch.from_numpy(labels).to(torch.int64)
        train_end = min(self.train_size, TRAIN_SIZE)
        start = len(x) - EVAL_SIZE
        end = start + min(self.eval_size, EVAL_SIZE)
        return TensorDataset(x[:train_end], y[:train_end]), TensorDataset(x[start:end], y[start:end])

    def setup(self, stage: str | None = None) -> None:
        """Generate (or load) both splits, once.

        Args:
            stage: Lightning's stage; both splits are built for every stage.
        """
        if self.train_set is not None and self.eval_set is not None:
            return
        if self.task == "sequential_mnist":
            self.train_set, self.eval_set = self._mnist()
        else:
            self.train_set, self.eval_set = self._synthetic(self.train_size, 0), self._synthetic(self.eval_size, 1)
