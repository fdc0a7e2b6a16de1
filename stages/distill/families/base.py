"""A family adapter's records: a family matches models and lists their units; a unit reads a token grid."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Unit:
    """A tappable block or stage: its module path, the module, and its output as a (B, H, W, D) grid."""

    name: str
    module: nn.Module
    grid: Callable[[torch.Tensor], torch.Tensor]
    reduction: int  # input pixels per grid cell along a side (an estimate of the grid before any forward)


@dataclass(frozen=True)
class Family:
    name: str
    matches: Callable[[nn.Module], bool]
    units: Callable[[nn.Module], list[Unit]]

