"""Where each model family keeps its tokens: one small adapter per family, chosen by a registry.

An adapter lists a model's units (the blocks or stages that `distill.student_layers` / `teacher_layers`
index) and turns a unit's output into a token grid (B, H, W, D), whatever its layout: ViT tokens with
prefix tokens, Swin's NHWC maps, LeViT's (B, N, C) tokens, CNN feature maps. The first family in
`FAMILIES` whose `matches` accepts a model wins: specific families come before the general one.
"""
from __future__ import annotations

import torch.nn as nn

from pipeline.core.errors import UserError
from stages.distill.families import cait, hierarchical, vit
from stages.distill.families.base import Family, Unit

__all__ = ["FAMILIES", "Family", "Unit", "family_of", "units_of"]

FAMILIES: list[Family] = [vit.FAMILY, cait.FAMILY, hierarchical.FAMILY]  # most specific first


def family_of(model: nn.Module, field: str) -> Family:
    """The adapter for `model`, or a UserError naming the model's top-level modules."""
    for family in FAMILIES:
        if family.matches(model):
            return family
    found = ", ".join(name for name, _ in model.named_children()) or "no submodules"
    raise UserError(f"{field}.model = {type(model).__name__}: no token adapter knows this family (its modules: "
                    f"{found}); the manifold loss supports timm ViT/DeiT, CaiT and any timm model with "
                    "feature_info (Swin, LeViT, EfficientViT, MobileViT, CNNs); or set distill.manifold = false")


def units_of(model: nn.Module, field: str) -> list[Unit]:
    units = family_of(model, field).units(model)
    if not units:
        raise UserError(f"{field}.model = {type(model).__name__} has no blocks to match: set distill.manifold = false")
    return units

