"""The sequence tasks: temporal order, adding and sequential MNIST follow their definitions; the data module."""

from __future__ import annotations

import pytest
import torch

from lightning_mpc.data import SequenceData, adding, load_bundled_mnist, sequential_mnist, temporal_order
from lightning_mpc.data.sequences import ADDING_CONSTANT_MSE


@pytest.mark.parametrize("length", [10, 60, 123])
def test_temporal_order_places_two_symbols_and_labels_their_order(length: int) -> None:
    x, y = temporal_order(500, length, generator=torch.Generator().manual_seed(0))
    assert x.shape == (500, length, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x.sum(-1), torch.ones(500, length))  # one-hot
    symbols = x.argmax(-1)
    relevant = symbols < 2
    assert torch.equal(relevant.sum(1), torch.full((500,), 2))
    positions = relevant.nonzero()[:, 1].view(500, 2)
    assert (positions[:, 0] >= length // 10).all() and (positions[:, 0] < 2 * length // 10).all()
    assert (positions[:, 1] >= 5 * length // 10).all() and (positions[:, 1] < 6 * length // 10).all()
    first, second = symbols.gather(1, positions).unbind(1)
    assert torch.equal(y, 2 * first + second)
    assert set(y.tolist()) == {0, 1, 2, 3}
    again, _ = temporal_order(500, length, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


@pytest.mark.parametrize("length", [10, 30, 101])
def test_adding_marks_two_values_and_targets_their_mean(length: int) -> None:
    x, y = adding(20_000, length, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20_000, length, 2) and y.shape == (20_000, 1)
    values, markers = x.unbind(-1)
    assert ((values >= 0) & (values < 1)).all()
    assert torch.equal(markers.sum(1), torch.full((20_000,), 2.0))
    positions = markers.nonzero()[:, 1].view(20_000, 2)
    assert (positions[:, 0] < length // 10).all()
    assert (positions[:, 1] >= length // 10).all() and (positions[:, 1] < length // 2).all()
    torch.testing.assert_close(y.squeeze(1), (values * markers).sum(1) / 2)
    # the constant prediction 1/2 scores the variance of the mean of two uniform values, 1/24
    assert float(((y - 0.5) ** 2).mean()) == pytest.approx(ADDING_CONSTANT_MSE, rel=0.03)


def test_short_sequences_are_refused_with_a_hint() -> None:
    for make in (temporal_order, adding):
        with pytest.raises(ValueError, match="length >= 10.*"):
            make(4, 9)
        with pytest.raises(ValueError, match="HINT"):
            make(0, 20)
    with pytest.raises(ValueError, match="HINT"):
        SequenceData("temporal_order", length=0)


@pytest.mark.parametrize("chunk", [1, 7, 28])
def test_sequential_mnist_reads_pixels_in_order(chunk: int) -> None:
    images, _ = load_bundled_mnist()
    x = sequential_mnist(torch.from_numpy(images[:3]), chunk=chunk)
    assert x.shape == (3, 784 // chunk, chunk)
    torch.testing.assert_close(x.reshape(3, 28, 28), torch.from_numpy(images[:3]).float() / 255)
    permutation = torch.randperm(784, generator=torch.Generator().manual_seed(0))
    permuted = sequential_mnist(torch.from_numpy(images[:3]), chunk=chunk, permutation=permutation)
    torch.testing.assert_close(permuted.reshape(3, 784), x.reshape(3, 784)[:, permutation])
    with pytest.raises(ValueError, match="divide.*HINT"):
        sequential_mnist(torch.from_numpy(images[:3]), chunk=5)


@pytest.mark.parametrize(
    ("task", "kwargs", "shape", "output_size"),
    [
        ("temporal_order", {"length": 20}, (20, 6), 4),
        ("adding", {"length": 30}, (30, 2), 1),
        ("sequential_mnist", {"chunk": 16, "permute": True}, (49, 16), 10),
    ],
)
def test_data_module_splits(task: str, kwargs: dict, shape: tuple[int, int], output_size: int) -> None:
    data = SequenceData(task, train_size=40, eval_size=10, batch_size=8, **kwargs)  # type: ignore[arg-type]
    data.setup("fit")
    assert (data.sequence_length, data.input_size) == shape and data.output_size == output_size
    assert data.train_set is not None and data.eval_set is not None
    assert len(data.train_set) == 40 and len(data.eval_set) == 10
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (8, *shape)
    assert not torch.equal(data.train_set.tensors[0][:10], data.eval_set.tensors[0])
    again = SequenceData(task, train_size=40, eval_size=10, batch_size=8, **kwargs)  # type: ignore[arg-type]
    again.setup("fit")
    assert torch.equal(again.train_set.tensors[0], data.train_set.tensors[0])  # type: ignore[union-attr]
