"""torchvision's ConvNeXt, Vision Transformer and Swin Transformer (V1 and V2).

Downsampling layers (ConvNeXt's norm + strided convolution, Swin's patch merging) close the block
before them, so that the boundary tensor is the smaller one. The ViT's class token and position
embedding, which its ``forward`` uses between the patch projection and the first encoder layer, belong
to the first block.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import ConvNeXt, SwinTransformer, VisionTransformer
from torchvision.models.convnext import CNBlock

from lightning_mpc.core.blocks import BlockSpan
from lightning_mpc.core.partitioners.common import channels_last, members
from lightning_mpc.core.partitioners.pieces import AddEmbedding, FirstToken, ModelMethod, PrependToken
from lightning_mpc.core.partitioners.registry import NaturalBlocks, register_partitioner

__all__ = ["cut_convnext", "cut_swin", "cut_vision_transformer"]


@register_partitioner(ConvNeXt)
def cut_convnext(model: ConvNeXt) -> NaturalBlocks:
    """The stem, every ConvNeXt block (the last of a stage with the downsampling after it), the classifier."""
    children = list(model.features)
    blocks: list[list[nn.Module]] = [members(children[0])]
    for child in children[1:]:
        if isinstance(child, nn.Sequential) and len(child) and isinstance(child[0], CNBlock):
            blocks.extend([block] for block in child)
        else:  # downsampling: LayerNorm2d + strided convolution
            blocks[-1].extend(members(child))
    return [*blocks, [model.avgpool, *model.classifier]]


@register_partitioner(VisionTransformer)
def cut_vision_transformer(model: VisionTransformer) -> NaturalBlocks:
    """The embedding (patches, class token, position embedding), every encoder layer, the classifier."""
    encoder = model.encoder
    # VisionTransformer.forward: _process_input (conv_proj, reshape, permute), prepend the class token;
    # Encoder.forward: add pos_embedding, dropout. All of it is the first block's, parameters included.
    embedding = BlockSpan(
        ModelMethod(model, "_process_input", owns=[model.conv_proj]),
        PrependToken(model.class_token),
        AddEmbedding(encoder.pos_embedding),
        encoder.dropout,
        entry=model.conv_proj,
        exit=3,
    )
    # Encoder.forward ends with ln; VisionTransformer.forward then takes the class token x[:, 0].
    classifier = [encoder.ln, BlockSpan(FirstToken(), model.heads, entry=1)]
    return [embedding, *encoder.layers, classifier]


@register_partitioner(SwinTransformer)
def cut_swin(model: SwinTransformer) -> NaturalBlocks:
    """The patch embedding, every Swin block (the last of a stage with the patch merging after it), the classifier.

    Swin works channels last: every block's output is ``(N, H, W, C)``, and the automatic heads pool it so.
    """
    children = list(model.features)
    conv, *rest = members(children[0])  # Conv2d (channels first), Permute, LayerNorm
    blocks: list[list[nn.Module]] = [[conv, *(channels_last(layer) for layer in rest)]]
    for child in children[1:]:
        if isinstance(child, nn.Sequential):
            blocks.extend([channels_last(block)] for block in child)
        else:  # patch merging
            blocks[-1].append(channels_last(child))
    classifier = [channels_last(model.norm), model.permute, model.avgpool, model.flatten, model.head]
    return [*blocks, classifier]
