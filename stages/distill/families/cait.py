"""CaiT: its self-attention blocks carry patch tokens only (the class token joins in the class-attention
blocks, `blocks_token_only`, which mix no patch tokens and are left out of the layer map)."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.cait import Cait

from stages.distill.families.base import Family, Unit


def _units(model: Cait) -> list[Unit]:
    height, width = model.patch_embed.grid_size

    def grid(tokens: torch.Tensor) -> torch.Tensor:
        return tokens.unflatten(1, (height, width))

    patch = model.patch_embed.patch_size[0]
    return [Unit(f"blocks.{i}", block, grid, patch) for i, block in enumerate(model.blocks)]


def _matches(model: nn.Module) -> bool:
    return isinstance(model, Cait)


FAMILY = Family("cait", _matches, _units)
