"""LightningModules and data shared by the Lightning tests."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mpc import MPCMixin


def mlp_net(in_features: int = 6, width: int = 16, classes: int = 3, depth: int = 5) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Sequential(nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.Tanh())]
    layers += [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth - 2)]
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def small_resnet(classes: int = 3) -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=classes)


class Classifier(MPCMixin, L.LightningModule):
    """An ordinary classification module; only the MPCMixin base is added."""

    def __init__(
        self,
        net: nn.Module | None = None,
        heads: nn.ModuleList | None = None,
        lr: float = 0.05,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        self.net = net if net is not None else mlp_net()
        object.__setattr__(self, "_given_heads", heads)  # not a submodule: configure_heads hands it over
        self.lr = lr
        self.flatten = flatten

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1) if self.flatten else x)

    def configure_heads(self) -> nn.ModuleList | None:
        # A copy: under a spawn launcher the given heads would otherwise share memory across processes.
        return copy.deepcopy(self._given_heads)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def vector_data(n: int = 64, features: int = 6, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g))


def image_data(n: int = 16, size: int = 16, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))


def loader(dataset: TensorDataset, batch_size: int = 8) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def free_port() -> int:
    """A TCP port on the loopback interface that is free now (for a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def trainer(**kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**(defaults | kwargs))


def twins(module: Classifier) -> tuple[Classifier, Classifier]:
    """Two identical copies."""
    return copy.deepcopy(module), copy.deepcopy(module)


class RankShardSampler(torch.utils.data.Sampler[int]):
    """Cuts every joint batch of ``joint_batch`` samples into equal, ordered shards, one per process.

    Averaging the processes' gradients then equals one process on the joint batch (mean losses).
    """

    def __init__(self, num_samples: int, joint_batch: int) -> None:
        self.num_samples = num_samples
        self.joint_batch = joint_batch

    def _rank_world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __iter__(self):  # type: ignore[no-untyped-def]
        rank, world = self._rank_world()
        shard = self.joint_batch // world
        for start in range(0, self.num_samples - self.joint_batch + 1, self.joint_batch):
            yield from range(start + rank * shard, start + (rank + 1) * shard)

    def __len__(self) -> int:
        rank, world = self._rank_world()
        return (self.num_samples // self.joint_batch) * (self.joint_batch // world)


class SameHorizonEverywhere(L.Callback):
    """Fails the run unless every process trains with the same (selected) horizon."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        horizon = torch.tensor(int(trainer.strategy.horizon))
        gathered = trainer.strategy.all_gather(horizon)
        assert bool((gathered == horizon).all()), f"processes disagree on the horizon: {gathered.tolist()}"
