"""timm VisionTransformer and its subclasses (ViT, DeiT incl. the distilled head, registers, our conv-stem ViT):
every block carries prefix tokens (class, distillation, registers) before the patch tokens; they are dropped."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from stages.distill.families.base import Family, Unit


def _units(model: VisionTransformer) -> list[Unit]:
    height, width = model.patch_embed.grid_size
    prefix = model.num_prefix_tokens

    def grid(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, prefix:].unflatten(1, (height, width))

    patch = model.patch_embed.patch_size[0]
    return [Unit(f"blocks.{i}", block, grid, patch) for i, block in enumerate(model.blocks)]


def _matches(model: nn.Module) -> bool:
    return isinstance(model, VisionTransformer)


FAMILY = Family("vit", _matches, _units)
