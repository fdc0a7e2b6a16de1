"""Hierarchical ViTs and CNNs (Swin, LeViT, EfficientViT, MobileViT, FastViT, ResNet, MobileNet...): the units
are the stages timm lists in `feature_info`, and each stage's output becomes a token grid whatever its layout:
NCHW feature maps (CNNs, EfficientViT, MobileViT), NHWC maps (Swin) or (B, H*W, C) tokens (LeViT)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from pipeline.core.errors import UserError
from stages.distill.families.base import Family, Unit


def _grid_reader(name: str, channels: int, nhwc: bool):
    """Output of stage `name` (with `channels` channels) -> (B, H, W, C)."""

    def grid(out: torch.Tensor) -> torch.Tensor:
        if out.ndim == 4:
            channels_last = out.shape[-1] == channels and (nhwc or out.shape[1] != channels)
            return out if channels_last else out.permute(0, 2, 3, 1)
        if out.ndim == 3:
            side = math.isqrt(out.shape[1])
            if side * side == out.shape[1]:
                return out.unflatten(1, (side, side))
        raise UserError(f"stage {name} gives a {tuple(out.shape)} output, not a square token grid or feature "
                        "map; choose other layers with distill.student_layers / teacher_layers")

    return grid


def _units(model: nn.Module) -> list[Unit]:
    nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
    return [Unit(info["module"], model.get_submodule(info["module"]),
                 _grid_reader(info["module"], info["num_chs"], nhwc), info["reduction"])
            for info in model.feature_info]


def _matches(model: nn.Module) -> bool:
    info = getattr(model, "feature_info", None)
    return isinstance(info, list) and bool(info) and all(isinstance(i, dict) and "module" in i for i in info)


FAMILY = Family("hierarchical", _matches, _units)
