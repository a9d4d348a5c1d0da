"""Models and data modules of the recipes in ``recipes/*.yaml`` (run them with ``lightning-mpc fit --config``).

* :class:`MLPClassifier` + :class:`MNISTData`: ``recipes/mnist_mlp.yaml`` (bundled digits by default).
* :class:`ResNetClassifier` + :class:`CIFAR10Data`: ``recipes/cifar10_resnet18.yaml``.
* :class:`DeepLinear` + :class:`LinearTeacherData`: ``recipes/deep_linear.yaml``.
* :class:`MobileNetV3Classifier` + :class:`MNISTData`: ``recipes/sff_mobilenet_v3_mnist.yaml``.
"""

from lightning_mpc.recipes.data import CIFAR10Data, DatasetUnavailableError, LinearTeacherData, MNISTData
from lightning_mpc.recipes.models import (
    DeepLinear,
    MLPClassifier,
    MobileNetV3Classifier,
    ResNetClassifier,
    cifar_resnet,
    mobilenet_v3,
    mobilenet_v3_blocks,
)

__all__ = [
    "CIFAR10Data",
    "DatasetUnavailableError",
    "DeepLinear",
    "LinearTeacherData",
    "MLPClassifier",
    "MNISTData",
    "MobileNetV3Classifier",
    "ResNetClassifier",
    "cifar_resnet",
    "mobilenet_v3",
    "mobilenet_v3_blocks",
]
