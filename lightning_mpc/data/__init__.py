"""Bundled offline datasets: 10,000 MNIST digits (see ``README.md`` in this folder for provenance and licence)."""

from lightning_mpc.data.mnist import (
    EVAL_SIZE,
    MNIST_MEAN,
    MNIST_STD,
    NUM_CLASSES,
    TRAIN_SIZE,
    BundledMNIST,
    load_bundled_mnist,
)

__all__ = [
    "EVAL_SIZE",
    "MNIST_MEAN",
    "MNIST_STD",
    "NUM_CLASSES",
    "TRAIN_SIZE",
    "BundledMNIST",
    "load_bundled_mnist",
]
