"""Offline datasets: 10,000 bundled MNIST digits (``README.md`` here: provenance, licence) and generated sequence tasks."""

from lightning_mpc.data.mnist import (
    EVAL_SIZE,
    MNIST_MEAN,
    MNIST_STD,
    NUM_CLASSES,
    TRAIN_SIZE,
    BundledMNIST,
    load_bundled_mnist,
)
from lightning_mpc.data.sequences import SequenceData, adding, sequential_mnist, temporal_order

__all__ = [
    "EVAL_SIZE",
    "MNIST_MEAN",
    "MNIST_STD",
    "NUM_CLASSES",
    "TRAIN_SIZE",
    "BundledMNIST",
    "SequenceData",
    "adding",
    "load_bundled_mnist",
    "sequential_mnist",
    "temporal_order",
]
