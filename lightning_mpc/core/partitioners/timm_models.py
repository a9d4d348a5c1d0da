"""timm models, cut through their own structure (``stages``/``blocks``, ``forward_head``); timm is optional.

Registered by qualified class name, so nothing here imports timm: a timm model is recognised when one is
passed in. The classifier block calls the model's own ``forward_head`` (pooling, dropout and classifier as
timm configures them), and a ViT's first block calls its own ``_pos_embed``, with the class, register and
position tokens registered on that block so they learn.
"""

from __future__ import annotations

from torch import nn

from lightning_mpc.core.blocks import BlockSpan
from lightning_mpc.core.partitioners.common import members, stage_blocks
from lightning_mpc.core.partitioners.pieces import ModelMethod
from lightning_mpc.core.partitioners.registry import NaturalBlocks, register_partitioner

__all__ = ["cut_timm_convnext", "cut_timm_efficientnet", "cut_timm_resnet", "cut_timm_vit"]


def _refuse_checkpointing(model: nn.Module) -> None:
    if any(getattr(module, "grad_checkpointing", False) is True for module in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has gradient checkpointing enabled: its forward re-runs blocks inside "
            "torch.utils.checkpoint, which horizon training cannot follow. HINT: call "
            "model.set_grad_checkpointing(False); horizon training already bounds activation memory."
        )


def _forward_head(model: nn.Module, owns: list[str], entry: str, exit: str) -> BlockSpan:
    """A block that runs ``model.forward_head``; ``owns`` are the modules it calls, ``entry``/``exit`` the first/last."""
    modules = [getattr(model, name) for name in owns if getattr(model, name, None) is not None]
    head = ModelMethod(model, "forward_head", owns=modules)
    return BlockSpan(head, entry=getattr(model, entry), exit=getattr(model, exit))


@register_partitioner("timm.models.resnet.ResNet")
def cut_timm_resnet(model: nn.Module) -> NaturalBlocks:
    """The stem (conv1, bn1, act1, maxpool), every residual block, forward_head (pool, dropout, fc)."""
    _refuse_checkpointing(model)
    stem = [*members(model.conv1), model.bn1, model.act1, *members(model.maxpool)]
    residual = stage_blocks([model.layer1, model.layer2, model.layer3, model.layer4])
    return [stem, *residual, _forward_head(model, ["global_pool", "fc"], "global_pool", "fc")]


@register_partitioner("timm.models.efficientnet.EfficientNet")
def cut_timm_efficientnet(model: nn.Module) -> NaturalBlocks:
    """The stem (conv_stem, bn1), every block of every stage, the head convolution, forward_head."""
    _refuse_checkpointing(model)
    head_conv = [model.conv_head, model.bn2]
    classifier = _forward_head(model, ["global_pool", "classifier"], "global_pool", "classifier")
    return [[model.conv_stem, model.bn1], *stage_blocks(model.blocks), head_conv, classifier]


@register_partitioner("timm.models.mobilenetv3.MobileNetV3")
def cut_timm_mobilenetv3(model: nn.Module) -> NaturalBlocks:
    """The stem (conv_stem, bn1), every block of every stage, forward_head (pool, head convolution, classifier)."""
    _refuse_checkpointing(model)
    owns = ["global_pool", "conv_head", "norm_head", "act2", "flatten", "classifier"]
    classifier = _forward_head(model, owns, "global_pool", "classifier")
    return [[model.conv_stem, model.bn1], *stage_blocks(model.blocks), classifier]


@register_partitioner("timm.models.convnext.ConvNeXt")
def cut_timm_convnext(model: nn.Module) -> NaturalBlocks:
    """The stem, every ConvNeXt block (the last of a stage with the next stage's downsampling), norm_pre + head."""
    _refuse_checkpointing(model)
    blocks: list[list[nn.Module]] = [members(model.stem)]
    for stage in model.stages:
        blocks[-1].extend(members(stage.downsample))  # Identity in the first stage
        blocks.extend([block] for block in stage.blocks)
    return [*blocks, [model.norm_pre, model.head]]


@register_partitioner("timm.models.vision_transformer.VisionTransformer")
def cut_timm_vit(model: nn.Module) -> NaturalBlocks:
    """The embedding (patches, class/register tokens, position embedding), every block, norm + forward_head."""
    _refuse_checkpointing(model)
    tokens = {name: getattr(model, name, None) for name in ("cls_token", "reg_token", "pos_embed")}
    position = ModelMethod(model, "_pos_embed", owns=[model.pos_drop], parameters=tokens)
    embedding = BlockSpan(model.patch_embed, position, model.patch_drop, model.norm_pre, entry=0, exit=3)
    owns = ["attn_pool", "fc_norm", "head_drop", "head"]
    head = ModelMethod(model, "forward_head", owns=[getattr(model, n) for n in owns if getattr(model, n, None) is not None])
    classifier = BlockSpan(model.norm, head, entry=0, exit=model.head)
    return [embedding, *model.blocks, classifier]
