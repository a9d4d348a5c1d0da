"""Models and data modules of the recipes in ``recipes/*.yaml`` (run them with ``lightning-mpc fit --config``).

* :class:`MLPClassifier` + :class:`MNISTData`: ``recipes/mnist_mlp.yaml`` (bundled digits by default).
* :class:`ResNetClassifier` + :class:`CIFAR10Data`: ``recipes/cifar10_resnet18.yaml``.
* :class:`DeepLinear` + :class:`LinearTeacherData`: ``recipes/deep_linear.yaml``.
* :class:`ResidualMLPClassifier` + :class:`MNISTData`: ``recipes/pint_mnist_resmlp.yaml`` (parallel in time).
* :class:`RecurrentTask` + :class:`SequenceData`: ``recipes/tp_temporal_order.yaml``, ``recipes/tp_adding.yaml``
  (target propagation, ``strategy="tp"``, or back-propagation through time).
* :class:`DropoutMLP` + :class:`ClassificationData`: ``recipes/pepita_mnist.yaml`` and ``recipes/pepita_cifar10.yaml``.
* :class:`MLPClassifier` + :class:`MNISTData`: ``recipes/ff_mnist.yaml`` (Forward-Forward).
* :class:`ResNetClassifier`, :class:`MobileNetV3Classifier` + :class:`MNISTData`: ``recipes/sff_resnet18_mnist.yaml``,
  ``recipes/sff_mobilenet_v3_mnist.yaml`` (Scalable Forward-Forward).
* :class:`CIFARResNetClassifier`: He et al.'s CIFAR ResNet as an ``nn.Sequential`` of blocks
  (``benchmarks/frontier.py --model cifar-resnet``).
"""

from lightning_mpc.data.sequences import SequenceData
from lightning_mpc.recipes.data import (
    CIFAR10Data,
    ClassificationData,
    DatasetUnavailableError,
    LinearTeacherData,
    MNISTData,
)
from lightning_mpc.recipes.models import (
    CIFARResNetClassifier,
    DeepLinear,
    DropoutMLP,
    MLPClassifier,
    MobileNetV3Classifier,
    RecurrentTask,
    ResidualMLPClassifier,
    ResNetClassifier,
    cifar_resnet,
    mobilenet_v3,
    mobilenet_v3_blocks,
)

__all__ = [
    "CIFAR10Data",
    "CIFARResNetClassifier",
    "ClassificationData",
    "DatasetUnavailableError",
    "DeepLinear",
    "DropoutMLP",
    "LinearTeacherData",
    "MLPClassifier",
    "MNISTData",
    "MobileNetV3Classifier",
    "RecurrentTask",
    "ResNetClassifier",
    "ResidualMLPClassifier",
    "SequenceData",
    "cifar_resnet",
    "mobilenet_v3",
    "mobilenet_v3_blocks",
]
