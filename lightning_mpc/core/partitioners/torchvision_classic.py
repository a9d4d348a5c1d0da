"""torchvision's earlier networks: AlexNet, VGG, SqueezeNet, DenseNet, GoogLeNet and Inception v3."""

from __future__ import annotations

from torch import nn
from torchvision.models import VGG, AlexNet, DenseNet, GoogLeNet, Inception3, SqueezeNet

from lightning_mpc.core.blocks import BlockSpan, has_trainable_parameters
from lightning_mpc.core.partitioners.common import members
from lightning_mpc.core.partitioners.pieces import ModelMethod
from lightning_mpc.core.partitioners.registry import NaturalBlocks, register_partitioner

__all__ = ["cut_densenet", "cut_googlenet", "cut_inception3", "cut_squeezenet", "cut_vgg"]


def _layers_from_each_learner(layers: nn.Sequential) -> list[list[nn.Module]]:
    """Consecutive layers, a new block at each layer with parameters that is not a normalisation."""
    blocks: list[list[nn.Module]] = []
    for layer in layers:
        starts = has_trainable_parameters(layer) and not isinstance(layer, nn.modules.batchnorm._NormBase)
        if starts or not blocks:
            blocks.append([layer])
        else:
            blocks[-1].append(layer)
    return blocks


def _pooled_classifier(model: VGG | AlexNet) -> list[nn.Module]:
    # VGG.forward and AlexNet.forward flatten between avgpool and the classifier.
    first, *rest = list(model.classifier)
    return [model.avgpool, BlockSpan(nn.Flatten(1), first, entry=1), *rest]


@register_partitioner(VGG)
def cut_vgg(model: VGG) -> NaturalBlocks:
    """Every convolution with its BatchNorm, ReLU and pooling; the pooled classifier."""
    return [*_layers_from_each_learner(model.features), _pooled_classifier(model)]


@register_partitioner(AlexNet)
def cut_alexnet(model: AlexNet) -> NaturalBlocks:
    """Every convolution with its ReLU and pooling; the pooled classifier."""
    return [*_layers_from_each_learner(model.features), _pooled_classifier(model)]


@register_partitioner(SqueezeNet)
def cut_squeezenet(model: SqueezeNet) -> NaturalBlocks:
    """The first convolution with its ReLU and pooling, every Fire module (with pooling), the classifier."""
    *layers, pool = list(model.classifier)
    # SqueezeNet.forward flattens the classifier's output: the block ends with the model's own output.
    classifier = [*layers, BlockSpan(pool, nn.Flatten(1), exit=model)]
    return [*_layers_from_each_learner(model.features), classifier]


@register_partitioner(DenseNet)
def cut_densenet(model: DenseNet) -> NaturalBlocks:
    """The stem, every dense block with the transition after it, the final norm with the pooled classifier."""
    blocks: list[list[nn.Module]] = []
    stem: list[nn.Module] = []
    children = list(model.features.named_children())
    for name, child in children[:-1]:
        if name.startswith("denseblock"):
            blocks.append([child])
        elif name.startswith("transition"):
            blocks[-1].extend(members(child))
        else:
            stem.append(child)
    # DenseNet.forward applies F.relu(inplace=True), adaptive average pooling and flatten after the features.
    classifier = BlockSpan(
        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(1), model.classifier, entry=3
    )
    final_norm = children[-1][1]
    return [stem, *blocks, [final_norm, classifier]]


def _refuse_aux_logits(model: GoogLeNet | Inception3, aux_modules: list[nn.Module | None]) -> None:
    if model.aux_logits or any(module is not None for module in aux_modules):
        builder = "googlenet" if isinstance(model, GoogLeNet) else "inception_v3"
        raise ValueError(
            f"{type(model).__name__} has auxiliary classifiers (aux_logits=True): in training mode its forward "
            "returns a named tuple and runs the auxiliary heads on intermediate features, which horizon training "
            f"cannot cut into blocks. HINT: build it with torchvision.models.{builder}(weights=None, "
            "aux_logits=False); the local heads of horizon training take the auxiliary classifiers' role."
        )


def _with_input_transform(model: GoogLeNet | Inception3, first: list[nn.Module]) -> list[nn.Module]:
    """The first block, starting with the model's ``_transform_input`` when ``transform_input=True``."""
    if not model.transform_input:
        return first
    # The transform runs before the first module: the block's input is the model's own input.
    return [BlockSpan(ModelMethod(model, "_transform_input"), first[0], entry=model, exit=1), *first[1:]]


@register_partitioner(GoogLeNet)
def cut_googlenet(model: GoogLeNet) -> NaturalBlocks:
    """Every convolution and Inception module with the pooling after it; the pooled classifier (aux_logits=False)."""
    _refuse_aux_logits(model, [model.aux1, model.aux2])
    order = [
        model.conv1, model.maxpool1, model.conv2, model.conv3, model.maxpool2,
        model.inception3a, model.inception3b, model.maxpool3,
        model.inception4a, model.inception4b, model.inception4c, model.inception4d, model.inception4e, model.maxpool4,
        model.inception5a, model.inception5b,
    ]  # fmt: skip
    # GoogLeNet.forward flattens between avgpool and dropout.
    classifier = [model.avgpool, BlockSpan(nn.Flatten(1), model.dropout, model.fc, entry=1)]
    first = _with_input_transform(model, [order[0]])
    return [first, *order[1:], classifier]


@register_partitioner(Inception3)
def cut_inception3(model: Inception3) -> NaturalBlocks:
    """Every convolution and Inception module with the pooling after it; the pooled classifier (aux_logits=False)."""
    _refuse_aux_logits(model, [model.AuxLogits])
    order = [
        model.Conv2d_1a_3x3, model.Conv2d_2a_3x3, model.Conv2d_2b_3x3, model.maxpool1,
        model.Conv2d_3b_1x1, model.Conv2d_4a_3x3, model.maxpool2,
        model.Mixed_5b, model.Mixed_5c, model.Mixed_5d,
        model.Mixed_6a, model.Mixed_6b, model.Mixed_6c, model.Mixed_6d, model.Mixed_6e,
        model.Mixed_7a, model.Mixed_7b, model.Mixed_7c,
    ]  # fmt: skip
    # Inception3.forward flattens between dropout and fc.
    classifier = [model.avgpool, model.dropout, BlockSpan(nn.Flatten(1), model.fc, entry=1)]
    first = _with_input_transform(model, [order[0]])
    return [first, *order[1:], classifier]
