"""The bundled MNIST digits and their LightningDataModule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_mpc.data import (
    EVAL_SIZE,
    MNIST_MEAN,
    MNIST_STD,
    TRAIN_SIZE,
    BundledMNIST,
    load_bundled_mnist,
)


def test_load_bundled_mnist_shapes_and_dtypes() -> None:
    images, labels = load_bundled_mnist()
    assert images.shape == (10_000, 28, 28)
    assert labels.shape == (10_000,)
    assert images.dtype == np.uint8
    assert labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == set(range(10))


def test_split_sizes_and_batches() -> None:
    dm = BundledMNIST(batch_size=64)
    dm.setup("fit")
    assert TRAIN_SIZE == 8_000 and EVAL_SIZE == 2_000
    assert len(dm.train_set) == 8_000
    assert len(dm.eval_set) == 2_000
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (64, 1, 28, 28)
        assert x.dtype == torch.float32
        assert y.shape == (64,)
        assert y.dtype == torch.int64
    assert len(dm.train_dataloader()) == 125
    assert len(dm.val_dataloader()) == 32


def test_split_follows_file_order_and_normalisation() -> None:
    images, labels = load_bundled_mnist()
    dm = BundledMNIST(batch_size=16)
    dm.setup()
    x_train, y_train = dm.train_set[0]
    x_eval, y_eval = dm.eval_set[0]
    expected_train = (torch.from_numpy(images[0]).float() / 255 - MNIST_MEAN) / MNIST_STD
    expected_eval = (torch.from_numpy(images[8_000]).float() / 255 - MNIST_MEAN) / MNIST_STD
    torch.testing.assert_close(x_train[0], expected_train)
    torch.testing.assert_close(x_eval[0], expected_eval)
    assert int(y_train) == int(labels[0])
    assert int(y_eval) == int(labels[8_000])
    x_all = dm.train_set.tensors[0]
    assert abs(float(x_all.mean())) < 0.05
    assert abs(float(x_all.std()) - 1.0) < 0.05


def test_limit_and_deterministic_shuffle() -> None:
    dm = BundledMNIST(batch_size=8, limit=20, shuffle_seed=3)
    dm.setup()
    assert len(dm.train_set) == 20
    assert len(dm.eval_set) == 20
    first = torch.cat([y for _, y in dm.train_dataloader()])
    again = torch.cat([y for _, y in dm.train_dataloader()])
    assert torch.equal(first, again)  # the order depends on shuffle_seed, not the global random state


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"batch_size": 0}, "batch_size"), ({"limit": 0}, "limit"), ({"num_workers": -1}, "num_workers")],
)
def test_bad_arguments(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BundledMNIST(**kwargs)


def test_dataloader_before_setup_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        BundledMNIST().train_dataloader()
