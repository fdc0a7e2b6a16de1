"""ViTs with a convolutional patch stem ("Early Convolutions Help Transformers See Better").

A stack of 3x3 stride-2 convolutions replaces the single patchify convolution; everything
after the stem is timm's VisionTransformer, so hooks, export and token layout are unchanged.
The stem makes small ViTs trained from scratch on small images converge several times faster.
"""
from __future__ import annotations

import math

import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer


class ConvStemPatchEmbed(PatchEmbed):
    """Patch embedding by log2(patch_size) conv-BN-ReLU stride-2 stages and a 1x1 projection."""

    def __init__(self, *args, stem_width: int = 32, **kwargs):
        super().__init__(*args, **kwargs)
        stride = self.patch_size[0]
        if self.patch_size[0] != self.patch_size[1] or stride < 2 or stride & (stride - 1):
            raise ValueError(f"conv stem needs a square power-of-two patch size, got {self.patch_size}")
        in_chans, embed_dim = self.proj.in_channels, self.proj.out_channels
        layers, width = [], stem_width
        for _ in range(int(math.log2(stride))):
            layers += [nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            in_chans, width = width, width * 2
        layers.append(nn.Conv2d(in_chans, embed_dim, 1))
        self.proj = nn.Sequential(*layers)


def _create(variant: str, stem_width: int, pretrained: bool = False, **kwargs) -> VisionTransformer:
    def embed_layer(**embed_kwargs):
        return ConvStemPatchEmbed(stem_width=stem_width, **embed_kwargs)

    defaults = dict(img_size=32, patch_size=8, in_chans=1, num_classes=10)
    return build_model_with_cfg(VisionTransformer, variant, pretrained,
                                embed_layer=embed_layer, **{**defaults, **kwargs})


def _cfg(**kwargs) -> dict:
    """No published weights: `pretrained=True` needs `pretrained_cfg_overlay=dict(file=...)`."""
    return dict(url="", num_classes=10, input_size=(1, 32, 32), mean=(0.5,), std=(0.5,),
                first_conv="patch_embed.proj.0", classifier="head", license="apache-2.0", **kwargs)


default_cfgs = generate_default_cfgs({
    "convstem_vit_tiny.untrained": _cfg(),
    "convstem_vit_small.untrained": _cfg(),
})


@register_model
def convstem_vit_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Student-sized: dim 64, 4 blocks, 2 heads, 16-channel stem (0.16 M parameters, 6.1 MFLOPs at 32 px)."""
    args = dict(embed_dim=64, depth=4, num_heads=2, mlp_ratio=2.0)
    return _create("convstem_vit_tiny", 16, pretrained, **{**args, **kwargs})


@register_model
def convstem_vit_small(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Teacher-sized: dim 96, 4 blocks, 3 heads, 32-channel stem (0.41 M parameters, 15.7 MFLOPs at 32 px)."""
    args = dict(embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0)
    return _create("convstem_vit_small", 32, pretrained, **{**args, **kwargs})
