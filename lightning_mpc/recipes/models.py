"""The LightningModules of the recipes: a deep MLP, a residual MLP, a CIFAR ResNet-18, a deep linear network, an RNN.

Every model here but :class:`RecurrentTask` (target propagation's recurrent network) is an ordinary
``LightningModule`` with :class:`~lightning_mpc.MPCMixin` first among its bases, so it trains unchanged
under Lightning's default strategy (back-propagation) and under ``strategy="mpc"`` /
:class:`~lightning_mpc.MPCStrategy`. The network to cut into blocks is the module's ``net`` attribute (an
``nn.Sequential`` or a torchvision ``ResNet``). Metric names are ``train/loss``, ``val/acc`` and ``test/acc``
for the classifiers, ``train/loss``, ``val/loss`` and ``test/loss`` for the regression model.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.models import MobileNetV3

from lightning_mpc.core.heads import default_local_loss
from lightning_mpc.core.partition import BlockSpan
from lightning_mpc.lightning.mixin import MPCMixin
from lightning_mpc.recipes.networks import cifar_resnet_depth
from lightning_mpc.rules.pint.modules import residual_mlp
from lightning_mpc.rules.tp.functional import Nonlinearity
from lightning_mpc.rules.tp.modules import Cell, Init, RNNSequenceModel

__all__ = [
    "DeepLinear",
    "DropoutMLP",
    "MLPClassifier",
    "MobileNetV3Classifier",
    "RecurrentTask",
    "ResNetClassifier",
    "ResidualMLPClassifier",
    "cifar_resnet",
    "mobilenet_v3",
    "mobilenet_v3_blocks",
]

Stem = Literal["cifar", "imagenet"]

Batch = tuple[Tensor, Tensor]


class _Classifier(MPCMixin, L.LightningModule):
    """Shared steps of the classifiers: cross-entropy, accuracy, arg-max predictions."""

    net: nn.Module
    val_acc: MulticlassAccuracy
    test_acc: MulticlassAccuracy

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch of inputs."""
        return self.net(x)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Cross-entropy of the final output (under MPC the earlier blocks learn inside this forward)."""
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Accuracy and loss on the validation split, logged per epoch."""
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Accuracy on the test split."""
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test/acc", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Predicted class of every sample (``batch`` is ``(x, y)`` or ``x``)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(dim=-1)

    def _add_accuracy(self, num_classes: int) -> None:
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")


class _SGDClassifier(_Classifier):
    """A classifier around a given network, trained with Nesterov SGD and an optional per-step cosine schedule."""

    def __init__(
        self, net: nn.Module, num_classes: int, lr: float, momentum: float, weight_decay: float, cosine: bool
    ) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.cosine = cosine
        self._add_accuracy(num_classes)

    def configure_optimizers(self) -> Any:
        """SGD over every parameter (rule modules included), with a per-step cosine schedule when ``cosine``."""
        optimizer = torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=True
        )
        if not self.cosine:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        if not math.isfinite(total):
            total = 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _FlatAdamClassifier(_Classifier):
    """Inputs of any shape ``(batch, ...)`` flattened for ``self.net``; Adam over every parameter."""

    lr: float
    weight_decay: float

    def _set_training(self, lr: float, weight_decay: float, num_classes: int) -> None:
        """Adam's settings and the accuracy metrics."""
        self.lr = lr
        self.weight_decay = weight_decay
        self._add_accuracy(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of inputs of any shape ``(batch, ...)``."""
        return self.net(x.flatten(1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over every parameter (under MPC this includes the local heads)."""
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class MLPClassifier(_FlatAdamClassifier):
    """An MLP of ``num_blocks`` blocks: ``Linear + ReLU`` blocks, then a ``Linear`` to the classes.

    The blocks are the children of ``self.net`` (an ``nn.Sequential``), which is what
    :class:`~lightning_mpc.MPCStrategy` cuts; inputs of any shape ``(batch, ...)`` are flattened. This is
    the model of the ``mnist_mlp`` recipe, the demo (``python -m lightning_mpc.demo``) and the frontier
    benchmark.

    Args:
        num_blocks: number of blocks ``T`` (at least 2).
        hidden: width of the hidden layers.
        in_features: flattened input size.
        num_classes: number of classes.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.

    Raises:
        ValueError: for fewer than 2 blocks or a non-positive width.
    """

    def __init__(
        self,
        num_blocks: int = 8,
        hidden: int = 256,
        in_features: int = 28 * 28,
        num_classes: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if num_blocks < 2:
            raise ValueError(
                f"MLPClassifier needs at least 2 blocks, got num_blocks={num_blocks}. HINT: pass num_blocks >= 2."
            )
        if hidden < 1 or in_features < 1 or num_classes < 2:
            raise ValueError(
                f"MLPClassifier: hidden={hidden}, in_features={in_features} and num_classes={num_classes} must be "
                "positive (at least 2 classes). HINT: check the model's init_args."
            )
        self.save_hyperparameters()
        widths = [in_features] + [hidden] * (num_blocks - 1)
        blocks: list[nn.Module] = [nn.Sequential(nn.Linear(w_in, hidden), nn.ReLU()) for w_in in widths[:-1]]
        blocks.append(nn.Linear(hidden, num_classes))
        self.net = nn.Sequential(*blocks)
        self._set_training(lr, weight_decay, num_classes)


class ResidualMLPClassifier(_FlatAdamClassifier):
    """A residual MLP read as an ODE: a stem, ``num_steps`` Euler steps of equal width, a linear classifier.

    ``self.net`` is :func:`~lightning_mpc.rules.pint.residual_mlp`: ``Linear + Tanh`` to ``width``, then
    ``num_steps`` blocks ``x + dt * tanh(W x + b)`` (:class:`~lightning_mpc.rules.pint.ResidualStep`,
    ``dt = horizon / num_steps``), then ``Linear`` to the classes. The model of the ``pint_mnist_resmlp`` recipe,
    trained parallel in time with ``strategy="pint"`` (or with back-propagation, or MPC, like any module here).

    Args:
        num_steps: ODE steps (at least 1).
        width: the state's width.
        horizon: the integration time ``T``.
        in_features: flattened input size.
        num_classes: number of classes.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.

    Raises:
        ValueError: for no step, a non-positive width or horizon, or fewer than 2 classes.
    """

    def __init__(
        self,
        num_steps: int = 16,
        width: int = 128,
        horizon: float = 4.0,
        in_features: int = 28 * 28,
        num_classes: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"ResidualMLPClassifier needs at least 2 classes, got {num_classes}. HINT: pass num_classes >= 2."
            )
        self.save_hyperparameters()
        self.net = residual_mlp(num_steps, width, in_features, num_classes, horizon)
        self._set_training(lr, weight_decay, num_classes)


class DropoutMLP(_Classifier):
    """``Linear + ReLU + Dropout`` blocks and a last ``Linear``, trained by SGD with momentum and step decay.

    The network and optimizer of the PEPITA papers (Dellaferrera & Kreiman, arXiv 2201.11665): one hidden
    layer of 1024, dropout 10 %, no biases, He-uniform weights (uniform in ``+-sqrt(6 / fan_in)``), SGD with
    momentum 0.9, the learning rate divided by 10 at the ``milestones`` epochs. Its blocks (the children of
    ``self.net``) suit ``strategy="pepita"``, MPC and back-propagation alike; inputs of any shape are flattened.

    Args:
        hidden: the widths of the hidden layers.
        in_features: the flattened input size; ``None`` reads it from the datamodule's ``dims`` when training
            starts (so ``--data.name cifar10`` needs no other flag), and stores it in the hyper-parameters.
        num_classes: number of classes.
        dropout: dropout probability after every hidden activation.
        bias: give the layers biases (the papers' networks have none).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        milestones: epochs at which the learning rate is multiplied by ``gamma``.
        gamma: the learning-rate factor at each milestone.

    Raises:
        ValueError: for an empty or non-positive width, or a dropout outside ``[0, 1)``.
    """

    def __init__(
        self,
        hidden: list[int] | None = None,
        in_features: int | None = None,
        num_classes: int = 10,
        dropout: float = 0.1,
        bias: bool = False,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        hidden = [1024] if hidden is None else list(hidden)
        if not hidden or min(hidden) < 1 or num_classes < 2 or (in_features is not None and in_features < 1):
            raise ValueError(
                f"DropoutMLP: hidden={hidden}, in_features={in_features} and num_classes={num_classes} must be positive "
                "(at least one hidden layer, two classes). HINT: check the model's init_args."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DropoutMLP: dropout must be in [0, 1), got {dropout}. HINT: the papers use 0.1.")
        self.save_hyperparameters()
        self.hidden = hidden
        self.num_classes = num_classes
        self.dropout = dropout
        self.bias = bias
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.milestones = list(milestones or [])
        self.gamma = gamma
        self.net: nn.Sequential | None = None  # type: ignore[assignment]
        if in_features is not None:
            self.net = self._build(in_features)
        self._add_accuracy(num_classes)

    def _build(self, in_features: int) -> nn.Sequential:
        widths = [in_features, *self.hidden]
        blocks: list[nn.Module] = [
            nn.Sequential(nn.Linear(w_in, w_out, bias=self.bias), nn.ReLU(), nn.Dropout(self.dropout))
            for w_in, w_out in pairwise(widths)
        ]
        blocks.append(nn.Linear(widths[-1], self.num_classes, bias=self.bias))
        net = nn.Sequential(*blocks)
        for module in net.modules():
            if isinstance(module, nn.Linear):
                bound = math.sqrt(6.0 / module.in_features)
                nn.init.uniform_(module.weight, -bound, bound)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        return net

    def configure_model(self) -> None:
        """Build the network from the datamodule's ``dims`` when ``in_features`` was not given."""
        if self.net is not None:
            return
        dims = getattr(getattr(self._trainer, "datamodule", None), "dims", None)
        if dims is None:
            raise ValueError(
                "DropoutMLP(in_features=None) reads its input size from the datamodule's dims, but the trainer has no "
                "datamodule with dims. HINT: pass in_features (784 for MNIST, 3072 for CIFAR-10)."
            )
        in_features = math.prod(dims)
        self.hparams["in_features"] = in_features  # checkpoints rebuild the same network
        self.net = self._build(in_features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of inputs of any shape ``(batch, ...)``."""
        if self.net is None:
            raise RuntimeError("DropoutMLP has no network yet. HINT: pass in_features, or train it with a datamodule.")
        return self.net(x.flatten(1))

    def configure_optimizers(self) -> Any:
        """SGD with momentum over every parameter, the learning rate multiplied by ``gamma`` at each milestone."""
        optimizer = torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        if not self.milestones:
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=self.milestones, gamma=self.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def cifar_resnet(
    arch: str = "resnet18", num_classes: int = 10, in_channels: int = 3, stem: Stem = "cifar"
) -> torchvision.models.ResNet:
    """A torchvision ResNet with the CIFAR stem: a 3x3, stride-1 ``conv1`` and no max-pool.

    On 32x32 images the ImageNet stem (7x7 stride-2 convolution, then a stride-2 max-pool) leaves 8x8
    feature maps before the first residual stage; the CIFAR variant keeps 32x32, as in the usual
    CIFAR-10 ResNet-18 (about 95 % test accuracy with standard augmentation). Weights are random; nothing
    is downloaded.

    Args:
        arch: a torchvision ResNet builder name (``resnet18``, ``resnet34``, ``resnet50``, ...).
        num_classes: outputs of the final ``fc``.
        in_channels: input channels (1 for MNIST digits).
        stem: ``"cifar"`` (above) or ``"imagenet"`` (torchvision's own stem, with ``conv1`` rebuilt for
            ``in_channels`` when it is not 3; 16 times cheaper on small images, 28x28 digits reach the last
            stage at 1x1).

    Raises:
        ValueError: if ``arch`` is not a torchvision ResNet builder, or for an unknown stem.
    """
    builder = getattr(torchvision.models, arch, None) if arch.startswith(("resnet", "wide_resnet", "resnext")) else None
    if builder is None or not callable(builder):
        raise ValueError(
            f"Unknown ResNet architecture {arch!r}. HINT: use a torchvision ResNet builder such as resnet18, "
            "resnet34, resnet50 or wide_resnet50_2."
        )
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"Unknown ResNet stem {stem!r}. HINT: use stem='cifar' or stem='imagenet'.")
    model = builder(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    return model


class ResNetClassifier(_SGDClassifier):
    """A torchvision ResNet (CIFAR stem, see :func:`cifar_resnet`) trained with SGD and a cosine schedule.

    :func:`lightning_mpc.partition` cuts it into the stem, every residual block and the pooled
    classifier: 10 blocks for ResNet-18.

    Args:
        arch: torchvision ResNet builder name.
        num_classes: number of classes.
        lr: peak SGD learning rate.
        momentum: SGD (Nesterov) momentum.
        weight_decay: SGD weight decay.
        cosine: anneal the learning rate to 0 over the run with a per-step cosine schedule.
        in_channels: input channels (1 for MNIST digits).
        stem: ``"cifar"`` or ``"imagenet"`` (see :func:`cifar_resnet`).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 10,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        cosine: bool = True,
        in_channels: int = 3,
        stem: Stem = "cifar",
    ) -> None:
        super().__init__(
            cifar_resnet(arch, num_classes, in_channels, stem), num_classes, lr, momentum, weight_decay, cosine
        )
        self.save_hyperparameters()


class CIFARResNetClassifier(_SGDClassifier):
    """He et al.'s CIFAR ResNet as an ``nn.Sequential`` of blocks (:func:`~lightning_mpc.recipes.networks.cifar_resnet_depth`),
    trained with SGD and a cosine schedule.

    The blocks are the children of ``self.net``: the stem, ``3n`` residual blocks and the pooled classifier
    (``depth = 6n + 2`` layers, ``3n + 2`` blocks), so activation checkpointing can wrap them too.

    Args:
        depth: ``6n + 2`` layers (14: 8 blocks, 20: 11 blocks, 110: 56 blocks).
        num_classes: number of classes.
        width: channels of the first stage.
        in_channels: input channels (1 for MNIST digits).
        lr: peak SGD learning rate.
        momentum: SGD (Nesterov) momentum.
        weight_decay: SGD weight decay.
        cosine: anneal the learning rate to 0 over the run with a per-step cosine schedule.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        width: int = 16,
        in_channels: int = 3,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        cosine: bool = True,
    ) -> None:
        net = cifar_resnet_depth(depth, num_classes, width, in_channels)
        super().__init__(net, num_classes, lr, momentum, weight_decay, cosine)
        self.save_hyperparameters()


def mobilenet_v3(
    arch: str = "mobilenet_v3_small", num_classes: int = 10, in_channels: int = 3, bn_momentum: float | None = 0.1
) -> MobileNetV3:
    """A torchvision MobileNetV3 (random weights) with its first convolution rebuilt for ``in_channels``.

    Args:
        arch: ``"mobilenet_v3_small"`` or ``"mobilenet_v3_large"``.
        num_classes: outputs of the classifier.
        in_channels: input channels (1 for MNIST digits).
        bn_momentum: momentum of every BatchNorm's running statistics; ``None`` keeps torchvision's 0.01, whose
            evaluation statistics lag far behind in short runs (bundled digits, SGD 0.05, 250 steps: 9.2 %
            evaluation accuracy with the running statistics against 93.8 % with batch statistics; 92.5 % with
            momentum 0.1).

    Raises:
        ValueError: for an unknown ``arch``.
    """
    if arch not in ("mobilenet_v3_small", "mobilenet_v3_large"):
        raise ValueError(f"Unknown MobileNetV3 {arch!r}. HINT: use mobilenet_v3_small or mobilenet_v3_large.")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = bn_momentum
    if in_channels != 3:
        first = model.features[0][0]
        model.features[0][0] = nn.Conv2d(
            in_channels, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False
        )
    return model


def mobilenet_v3_blocks(model: MobileNetV3) -> list[nn.Module]:
    """MobileNetV3 cut into blocks whose composition is the model: every child of ``features``, then the
    pooled classifier (``avgpool``, flatten, ``classifier``; hooked at ``avgpool`` and ``classifier``, which
    ``MobileNetV3.forward`` calls around its ``torch.flatten``)."""
    return [*model.features.children(), BlockSpan(model.avgpool, nn.Flatten(1), model.classifier, entry=0, exit=2)]


class MobileNetV3Classifier(_SGDClassifier):
    """A torchvision MobileNetV3 (see :func:`mobilenet_v3`) trained with SGD and a cosine schedule.

    ``configure_blocks()`` returns :func:`mobilenet_v3_blocks`: every child of ``features`` and the pooled
    classifier (14 blocks for the small model, 18 for the large one).

    Args:
        arch: ``"mobilenet_v3_small"`` or ``"mobilenet_v3_large"``.
        num_classes: number of classes.
        in_channels: input channels (1 for MNIST digits).
        lr: peak SGD learning rate.
        momentum: SGD (Nesterov) momentum.
        weight_decay: SGD weight decay.
        cosine: anneal the learning rate to 0 over the run with a per-step cosine schedule.
        bn_momentum: BatchNorm momentum (see :func:`mobilenet_v3`; ``None`` keeps torchvision's 0.01).
    """

    def __init__(
        self,
        arch: str = "mobilenet_v3_small",
        num_classes: int = 10,
        in_channels: int = 3,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        cosine: bool = True,
        bn_momentum: float | None = 0.1,
    ) -> None:
        net = mobilenet_v3(arch, num_classes, in_channels, bn_momentum)
        super().__init__(net, num_classes, lr, momentum, weight_decay, cosine)
        self.save_hyperparameters()

    def configure_blocks(self) -> list[nn.Module]:
        """Every child of ``features``, then the pooled classifier (see :func:`mobilenet_v3_blocks`)."""
        return mobilenet_v3_blocks(self.net)


class DeepLinear(MPCMixin, L.LightningModule):
    """The deep linear network of the paper's analysis: ``y = W_T ... W_1 x``, trained by mean squared error.

    Ren & Li (arXiv:2409.19561) analyse horizon truncation on this model: the angle between the
    horizon-``h`` gradient and the true one shrinks like ``1 - cos^2 = O((1 - h/T)^3)``. Every block is
    one bias-free ``nn.Linear``; the hidden layers are ``width`` wide and start orthogonal (scaled by
    ``init_gain``), so the product neither vanishes nor explodes with depth. Under MPC each hidden block
    gets a linear local head to the output and the default local loss (mean squared error for float
    targets). Pair it with :class:`~lightning_mpc.recipes.LinearTeacherData`.

    Args:
        depth: number of linear blocks ``T`` (at least 2).
        in_features: input size.
        width: hidden width.
        out_features: output size.
        lr: Adam learning rate.
        init_gain: gain of the orthogonal initialisation.

    Raises:
        ValueError: for a depth below 2 or a non-positive size.
    """

    def __init__(
        self,
        depth: int = 8,
        in_features: int = 32,
        width: int = 32,
        out_features: int = 16,
        lr: float = 1e-3,
        init_gain: float = 1.0,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"DeepLinear needs depth >= 2, got {depth}. HINT: pass depth >= 2.")
        if min(in_features, width, out_features) < 1:
            raise ValueError(
                f"DeepLinear: in_features={in_features}, width={width}, out_features={out_features} must be "
                "positive. HINT: check the model's init_args."
            )
        self.save_hyperparameters()
        sizes = [in_features] + [width] * (depth - 1) + [out_features]
        layers = [nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:])]
        for layer in layers:
            nn.init.orthogonal_(layer.weight, gain=init_gain)
        self.net = nn.Sequential(*layers)
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        """The network's output ``W_T ... W_1 x``."""
        return self.net(x)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Mean squared error of the final output."""
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Mean squared error on the validation split."""
        x, y = batch
        self.log("val/loss", F.mse_loss(self(x), y), prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Mean squared error on the test split."""
        x, y = batch
        self.log("test/loss", F.mse_loss(self(x), y))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The network's output (``batch`` is ``(x, y)`` or ``x``)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over every parameter (under MPC this includes the local heads)."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class RecurrentTask(L.LightningModule):
    """A recurrent network on a sequence task: the model of the ``tp_*`` recipes (target propagation vs BPTT).

    The network is a :class:`~lightning_mpc.rules.tp.RNNSequenceModel` (an explicitly unrolled tanh RNN, or a
    GRU with ``cell="gru"``, and a linear readout) in ``self.net``. The loss is cross-entropy for integer targets (temporal order, sequential
    MNIST) and mean squared error for floating-point ones (adding). Under Lightning's default strategy it
    trains with back-propagation through time; under ``strategy="tp"`` with target propagation, with the same
    ``training_step``. Metrics: ``train/loss``, ``val/loss``, ``test/loss``, and ``val/acc``, ``test/acc`` for
    classes. Pair it with :class:`~lightning_mpc.data.sequences.SequenceData`.

    Args:
        input_size: features per step (temporal order 6, adding 2, sequential MNIST the chunk size).
        hidden_size: the RNN's width (the paper: 100).
        output_size: classes, or 1 for the adding task.
        per_step: a readout at every step (sequence labelling) instead of the last one.
        nonlinearity: ``"tanh"``, ``"identity"`` or ``"relu"`` (back-propagation only).
        init: ``"orthogonal"`` (the paper's) or ``"uniform"``.
        cell: ``"rnn"`` (the unrolled tanh RNN) or ``"gru"`` (an unrolled GRU; target propagation in the
            linearized form only).
        lr: SGD learning rate (the paper: 0.1 for target propagation, 1e-5 with momentum 0.9 for BPTT on
            temporal order).
        momentum: SGD momentum.
        nesterov: Nesterov momentum (the paper's BPTT runs use it with momentum 0.9).
    """

    def __init__(
        self,
        input_size: int = 6,
        hidden_size: int = 100,
        output_size: int = 4,
        per_step: bool = False,
        nonlinearity: Nonlinearity = "tanh",
        init: Init = "orthogonal",
        cell: Cell = "rnn",
        lr: float = 0.1,
        momentum: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__()
        if not lr > 0 or momentum < 0 or (nesterov and momentum == 0):
            raise ValueError(
                f"RecurrentTask: lr={lr}, momentum={momentum}, nesterov={nesterov}: the learning rate must be "
                "positive, the momentum non-negative, and Nesterov needs a momentum. HINT: check the model's init_args."
            )
        self.save_hyperparameters()
        self.net = RNNSequenceModel(
            input_size, hidden_size, output_size, per_step=per_step, nonlinearity=nonlinearity, init=init, cell=cell
        )
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov

    def forward(self, x: Tensor) -> Tensor:
        """Predictions for sequences ``(batch, T, input_size)``."""
        return self.net(x)

    def _evaluate(self, batch: Batch, stage: str) -> Tensor:
        x, y = batch
        prediction = self(x)
        loss = default_local_loss(prediction, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test")
        if not y.is_floating_point():
            accuracy = (prediction.argmax(dim=-1) == y).float().mean()
            self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """The loss of one forward (back-propagated under BPTT; only reported under target propagation)."""
        return self._evaluate(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Loss (and accuracy for classes) on the evaluation split."""
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Loss (and accuracy for classes) on the evaluation split."""
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The network's output (``batch`` is ``(x, y)`` or ``x``)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD over every parameter."""
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum, nesterov=self.nesterov)
