"""The LightningDataModules of the recipes: MNIST (bundled or full), CIFAR-10, and a linear teacher.

Nothing here downloads unless asked: :class:`MNISTData` defaults to the 10,000 digits bundled in the
package; the full MNIST and CIFAR-10 come from torchvision with ``download=True`` by default, and when the
files are missing and cannot be downloaded (no network) they raise :class:`DatasetUnavailableError`,
whose message names the files, the folder to put them in and the flag to use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from lightning_mpc.data import MNIST_MEAN, MNIST_STD, NUM_CLASSES, BundledMNIST
from lightning_mpc.data.split import SplitDataModule

__all__ = ["CIFAR10Data", "ClassificationData", "DatasetUnavailableError", "LinearTeacherData", "MNISTData"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable; the message says what to download and where."""


def _check_common(owner: str, batch_size: int, num_workers: int, limit: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"{owner}: batch_size must be at least 1, got {batch_size}. HINT: pass --data.batch_size 64.")
    if num_workers < 0:
        raise ValueError(f"{owner}: num_workers must be 0 or more, got {num_workers}. HINT: pass --data.num_workers 0.")
    if limit is not None and limit < 1:
        raise ValueError(
            f"{owner}: limit must be a positive number of samples, got {limit}. HINT: leave it unset (null) for all."
        )


def _limited(dataset: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, range(limit))


def _load_torchvision(
    factory: Callable[..., Dataset],
    root: Path,
    download: bool,
    unavailable: Callable[[BaseException | None], str],
    **kwargs: Any,
) -> Dataset:
    """Build a torchvision dataset; turn a failed download or missing files into :class:`DatasetUnavailableError`."""
    try:
        return factory(root=str(root), download=download, **kwargs)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; torchvision raises RuntimeError too
        raise DatasetUnavailableError(unavailable(error)) from error


class MNISTData(SplitDataModule):
    """MNIST for the recipes: the bundled 10,000 digits (offline) or torchvision's full dataset.

    With ``name="bundled"`` (the default) this is :class:`lightning_mpc.data.BundledMNIST`: the first
    8,000 bundled digits train, the last 2,000 validate and test; nothing is read from disk or network
    beyond the package. With ``name="mnist"`` it is torchvision's MNIST in ``data_dir``: 60,000 training
    digits, and the 10,000 test digits for validation and test, downloaded on first use when
    ``download`` is true. Both are normalised the same way (mean 0.1307, std 0.3081), shape ``(1, 28, 28)``.

    Args:
        name: ``"bundled"`` or ``"mnist"``.
        data_dir: folder for torchvision's files (``<data_dir>/MNIST/raw``); unused for ``"bundled"``.
        download: download the full MNIST when it is missing.
        batch_size: samples per batch.
        num_workers: ``DataLoader`` workers.
        limit: use only the first ``limit`` samples of each split (smoke runs).
        seed: seed of the training loader's own shuffling generator.
        normalize: normalise the pixels; ``False`` keeps them in 0..1.

    Raises:
        ValueError: for an unknown ``name`` or bad sizes.
        DatasetUnavailableError: from ``prepare_data``/``setup`` when the full MNIST is missing and cannot
            be downloaded.
    """

    def __init__(
        self,
        name: Literal["bundled", "mnist"] = "bundled",
        data_dir: str = "data",
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        limit: int | None = None,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if name not in ("bundled", "mnist"):
            raise ValueError(
                f"MNISTData: unknown name {name!r}. HINT: use name='bundled' (10,000 digits shipped with the package, "
                "offline) or name='mnist' (torchvision's full MNIST, downloaded into data_dir)."
            )
        _check_common("MNISTData", batch_size, num_workers, limit)
        self.save_hyperparameters()  # logged with the model's (the W&B run config, hparams.yaml)
        self.name = name
        self.data_dir = Path(data_dir)
        self.download = download
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit = limit
        self.seed = seed
        self.normalize = normalize
        self.num_classes = NUM_CLASSES
        self.dims = (1, 28, 28)
        self._bundled = (
            BundledMNIST(
                batch_size=batch_size, num_workers=num_workers, limit=limit, shuffle_seed=seed, normalize=normalize
            )
            if name == "bundled"
            else None
        )
        self.train_set: Dataset | None = None
        self.eval_set: Dataset | None = None

    def _unavailable(self, error: BaseException | None) -> str:
        raw = (self.data_dir / "MNIST" / "raw").resolve()
        cause = f" ({type(error).__name__}: {str(error).strip().splitlines()[0]})" if error is not None else ""
        action = "could not be downloaded" if self.download else "is not on disk and download is off"
        return (
            f"The full MNIST {action}{cause}. It is read from {raw}: put the four files "
            f"{', '.join(_MNIST_FILES)} there (gunzipped, from https://ossci-datasets.s3.amazonaws.com/mnist/), "
            "or run once with network access and --data.download true. "
            "HINT: pass --data.name bundled to train on the 10,000 digits shipped with lightning-mpc, "
            "no download needed."
        )

    def _mnist(self, train: bool, download: bool) -> Dataset:
        from torchvision import datasets, transforms

        steps: list[Any] = [transforms.ToTensor()]
        if self.normalize:
            steps.append(transforms.Normalize((MNIST_MEAN,), (MNIST_STD,)))
        transform = transforms.Compose(steps)
        return _load_torchvision(
            datasets.MNIST, self.data_dir, download, self._unavailable, train=train, transform=transform
        )

    def prepare_data(self) -> None:
        """Download the full MNIST when ``name="mnist"`` and it is missing (once, on the main process)."""
        if self._bundled is None:
            self._mnist(train=True, download=self.download)
            self._mnist(train=False, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        """Build the training and evaluation splits.

        Args:
            stage: Lightning's stage; both splits are built for every stage.
        """
        if self.train_set is not None and self.eval_set is not None:
            return
        if self._bundled is not None:
            self._bundled.setup(stage)
            self.train_set, self.eval_set = self._bundled.train_set, self._bundled.eval_set
            return
        self.train_set = _limited(self._mnist(train=True, download=False), self.limit)
        self.eval_set = _limited(self._mnist(train=False, download=False), self.limit)


class CIFAR10Data(SplitDataModule):
    """CIFAR-10 through torchvision (50,000 training images; the 10,000 test images validate and test).

    Training images are augmented with a 4-pixel padded random crop and a horizontal flip; all images are
    normalised with the CIFAR-10 channel statistics (unless ``normalize=False``). ``fake=True`` replaces both splits by random tensors
    of the same shape (``fake_size`` samples each) for smoke tests and timing runs without the data.

    Args:
        data_dir: folder holding ``cifar-10-batches-py`` (downloaded there on first use when ``download``).
        download: download CIFAR-10 (about 170 MB) when it is missing.
        batch_size: samples per batch.
        num_workers: ``DataLoader`` workers.
        augment: random crop and flip on the training split.
        limit: use only the first ``limit`` samples of each split (smoke runs).
        fake: random data instead of CIFAR-10; nothing is read or downloaded.
        fake_size: samples per split when ``fake``.
        seed: seed of the shuffling generator (and of the fake data).
        normalize: normalise with the CIFAR-10 channel statistics; ``False`` keeps the pixels in 0..1.

    Raises:
        DatasetUnavailableError: from ``prepare_data``/``setup`` when CIFAR-10 is missing and cannot be
            downloaded.
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 2,
        augment: bool = True,
        limit: int | None = None,
        fake: bool = False,
        fake_size: int = 256,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        _check_common("CIFAR10Data", batch_size, num_workers, limit)
        if fake_size < 1:
            raise ValueError(f"CIFAR10Data: fake_size must be at least 1, got {fake_size}. HINT: pass 256.")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.download = download
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.limit = limit
        self.fake = fake
        self.fake_size = fake_size
        self.seed = seed
        self.normalize = normalize
        self.num_classes = 10
        self.dims = (3, 32, 32)
        self.train_set: Dataset | None = None
        self.eval_set: Dataset | None = None

    def _unavailable(self, error: BaseException | None) -> str:
        folder = (self.data_dir / "cifar-10-batches-py").resolve()
        cause = f" ({type(error).__name__}: {str(error).strip().splitlines()[0]})" if error is not None else ""
        action = "could not be downloaded" if self.download else "is not on disk and download is off"
        return (
            f"CIFAR-10 {action}{cause}. It is read from {folder}: download {_CIFAR10_URL} (about 170 MB) and "
            f"extract it into {self.data_dir} (`tar -xzf cifar-10-python.tar.gz -C {self.data_dir}`), or run once "
            "with network access and --data.download true. "
            "HINT: pass --data.data_dir to point at an existing copy, or --data.fake true for random data of the "
            "same shape (smoke runs only)."
        )

    def _cifar(self, train: bool, download: bool) -> Dataset:
        from torchvision import datasets, transforms

        steps: list[Any] = []
        if train and self.augment:
            steps += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        steps.append(transforms.ToTensor())
        if self.normalize:
            steps.append(transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD))
        return _load_torchvision(
            datasets.CIFAR10,
            self.data_dir,
            download,
            self._unavailable,
            train=train,
            transform=transforms.Compose(steps),
        )

    def _fake(self, offset: int) -> TensorDataset:
        generator = torch.Generator().manual_seed(self.seed + offset)
        x = torch.randn(self.fake_size, *self.dims, generator=generator)
        y = torch.randint(0, self.num_classes, (self.fake_size,), generator=generator)
        return TensorDataset(x, y)

    def prepare_data(self) -> None:
        """Download CIFAR-10 when it is missing (once, on the main process); nothing when ``fake``."""
        if not self.fake:
            self._cifar(train=True, download=self.download)
            self._cifar(train=False, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        """Build the training and evaluation splits.

        Args:
            stage: Lightning's stage; both splits are built for every stage.
        """
        if self.train_set is not None and self.eval_set is not None:
            return
        if self.fake:
            train, evaluation = self._fake(0), self._fake(1)
        else:
            train, evaluation = self._cifar(train=True, download=False), self._cifar(train=False, download=False)
        self.train_set, self.eval_set = _limited(train, self.limit), _limited(evaluation, self.limit)


class ClassificationData(SplitDataModule):
    """MNIST (bundled or full) or CIFAR-10 behind one ``name`` flag, so that ``--data.name cifar10`` switches a recipe.

    ``"bundled"`` and ``"mnist"`` are :class:`MNISTData`, ``"cifar10"`` is :class:`CIFAR10Data`. ``dims`` and
    ``num_classes`` follow the dataset, so a model that reads its input size from the data
    (:class:`~lightning_mpc.recipes.DropoutMLP` with ``in_features=None``) trains on each unchanged. A missing
    dataset that cannot be downloaded raises :class:`DatasetUnavailableError` (the message names the files, the
    folder, and the flag to use instead); the bundled digits need nothing.

    Args:
        name: ``"bundled"`` (10,000 digits shipped with the package), ``"mnist"`` or ``"cifar10"`` (torchvision).
        data_dir: folder of torchvision's files.
        download: download a missing torchvision dataset.
        batch_size: samples per batch.
        num_workers: ``DataLoader`` workers.
        limit: use only the first ``limit`` samples of each split (smoke runs).
        seed: seed of the training loader's shuffling generator (and of fake data).
        normalize: normalise the pixels with the dataset's statistics; ``False`` keeps them in 0..1.
        augment: CIFAR-10 only: random crop and flip on the training split.
        fake: CIFAR-10 only: random tensors of CIFAR-10's shape instead of the data (smoke runs).
        fake_size: samples per split when ``fake``.

    Raises:
        ValueError: for an unknown ``name``, or ``augment``/``fake`` with MNIST.
    """

    def __init__(
        self,
        name: Literal["bundled", "mnist", "cifar10"] = "bundled",
        data_dir: str = "data",
        download: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        limit: int | None = None,
        seed: int = 0,
        normalize: bool = True,
        augment: bool = False,
        fake: bool = False,
        fake_size: int = 256,
    ) -> None:
        super().__init__()
        if name not in ("bundled", "mnist", "cifar10"):
            raise ValueError(
                f"ClassificationData: unknown name {name!r}. HINT: use bundled (the digits shipped with lightning-mpc, "
                "offline), mnist or cifar10 (torchvision, downloaded into data_dir)."
            )
        if name != "cifar10" and (augment or fake):
            raise ValueError(
                f"ClassificationData: augment and fake apply to CIFAR-10 only, got name={name!r} with "
                f"augment={augment}, fake={fake}. HINT: drop them, or pass --data.name cifar10."
            )
        self.save_hyperparameters()
        self.name = name
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.inner: MNISTData | CIFAR10Data
        if name == "cifar10":
            self.inner = CIFAR10Data(
                data_dir=data_dir,
                download=download,
                batch_size=batch_size,
                num_workers=num_workers,
                augment=augment,
                limit=limit,
                fake=fake,
                fake_size=fake_size,
                seed=seed,
                normalize=normalize,
            )
        else:
            self.inner = MNISTData(
                name=name,
                data_dir=data_dir,
                download=download,
                batch_size=batch_size,
                num_workers=num_workers,
                limit=limit,
                seed=seed,
                normalize=normalize,
            )
        self.num_classes = self.inner.num_classes
        self.dims = self.inner.dims

    def prepare_data(self) -> None:
        """Download the dataset when it is missing and ``download`` is true (nothing for the bundled digits)."""
        self.inner.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Build the training and evaluation splits.

        Args:
            stage: Lightning's stage; both splits are built for every stage.
        """
        self.inner.setup(stage)
        self.train_set, self.eval_set = self.inner.train_set, self.inner.eval_set


class LinearTeacherData(SplitDataModule):
    """Regression on a random linear teacher: ``y = A x + noise``, ``x ~ N(0, I)``.

    The data of the deep linear network analysed in the paper. ``A`` has i.i.d. ``N(0, 1 / in_features)``
    entries, so ``y`` has about unit variance per output. Everything is generated in memory from ``seed``.

    Args:
        in_features: input size.
        out_features: output size.
        train_size: training samples.
        eval_size: validation (and test) samples.
        noise: standard deviation of the Gaussian label noise.
        batch_size: samples per batch.
        seed: seed of the teacher, the samples and the shuffling.

    Raises:
        ValueError: for non-positive sizes or negative noise.
    """

    def __init__(
        self,
        in_features: int = 32,
        out_features: int = 16,
        train_size: int = 4096,
        eval_size: int = 1024,
        noise: float = 0.01,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if min(in_features, out_features, train_size, eval_size, batch_size) < 1 or noise < 0:
            raise ValueError(
                f"LinearTeacherData: sizes must be positive and noise non-negative, got in_features={in_features}, "
                f"out_features={out_features}, train_size={train_size}, eval_size={eval_size}, "
                f"batch_size={batch_size}, noise={noise}. HINT: check the data's init_args."
            )
        self.save_hyperparameters()  # in_features/out_features must then agree with DeepLinear's
        self.in_features = in_features
        self.out_features = out_features
        self.train_size = train_size
        self.eval_size = eval_size
        self.noise = noise
        self.batch_size = batch_size
        self.seed = seed
        self.teacher: Tensor | None = None
        self.train_set: TensorDataset | None = None
        self.eval_set: TensorDataset | None = None

    def _sample(self, size: int, generator: torch.Generator) -> TensorDataset:
        assert self.teacher is not None
        x = torch.randn(size, self.in_features, generator=generator)
        y = x @ self.teacher.T + self.noise * torch.randn(size, self.out_features, generator=generator)
        return TensorDataset(x, y)

    def setup(self, stage: str | None = None) -> None:
        """Draw the teacher and both splits (deterministic in ``seed``).

        Args:
            stage: Lightning's stage; both splits are built for every stage.
        """
        if self.train_set is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        self.teacher = torch.randn(self.out_features, self.in_features, generator=generator) / self.in_features**0.5
        self.train_set = self._sample(self.train_size, generator)
        self.eval_set = self._sample(self.eval_size, generator)
