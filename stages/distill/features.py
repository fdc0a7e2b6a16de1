"""Token grids from chosen blocks or stages (forward hooks), aligned between student and teacher.

Each family adapter (stages/distill/families) names a model's units and reads a unit's output as a grid
(B, H, W, D), prefix tokens dropped. A student/teacher pair whose grids differ, either way and by any ratio,
is average-pooled (adaptive pooling) onto the coarser grid per side before the relation maps: the finer
model's relations are then those of its r x r cell means, and the intra-image and random terms see fewer,
coarser tokens.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.errors import UserError
from stages.distill.families import Unit, units_of


def default_layer_map(student_depth: int, teacher_depth: int) -> tuple[list[int], list[int]]:
    """The first and last third of the shallower network's units, and as many at each end of the deeper one,
    paired in order (at least one each): the paper's DeiT-Ti (12) <- CaiT-S24 (24) map,
    [0,1,2,3,8,9,10,11] -> [0,1,2,3,20,21,22,23], for any depths."""
    n = max(1, min(student_depth, teacher_depth) // 3)

    def ends(depth: int) -> list[int]:
        return sorted(set(range(n)) | set(range(depth - n, depth)))

    return ends(student_depth), ends(teacher_depth)


def checked_units(model: nn.Module, layers: list[int], field: str) -> list[Unit]:
    """The units `layers` index, after checking that they are in range."""
    units = units_of(model, field)
    bad = [i for i in layers if not 0 <= i < len(units)]
    if bad:
        names = f"{units[0].name}..{units[-1].name}" if len(units) > 1 else units[0].name
        raise UserError(f"distill.{field}_layers: {bad} out of range for {len(units)} units "
                        f"(valid 0..{len(units) - 1}: {names})")
    return [units[i] for i in layers]


def estimated_tokens(unit: Unit, img_size: int) -> int:
    """A unit's grid cells for a square image, from its reduction (exact for patch grids)."""
    return math.ceil(img_size / unit.reduction) ** 2


class TokenTap:
    """Captures the chosen units' outputs during a forward pass as (B, H, W, D) grids, in the order the
    layers were given (not the order the forward pass reaches them), so pairs are matched as written."""

    def __init__(self, model: nn.Module, layers: list[int], field: str):
        self.units = checked_units(model, layers, field)
        self.outputs: list[torch.Tensor | None] | None = None
        self.handles = [unit.module.register_forward_hook(self._hook(position, unit))
                        for position, unit in enumerate(self.units)]

    def _hook(self, position: int, unit: Unit):
        def hook(module, args, output) -> None:
            if self.outputs is not None:
                grid = unit.grid(output)
                if not output.requires_grad:
                    # without autograd nothing would notice a later in-place op on this output: keep a copy, made
                    # outside inference mode (a graph may save it) and contiguous (CaiT's blocks output tokens
                    # transposed in memory, which sends the loss's batched products into per-matrix loops)
                    with torch.inference_mode(False):
                        grid = grid.clone(memory_format=torch.contiguous_format)
                self.outputs[position] = grid
        return hook

    @contextmanager
    def capture(self) -> Iterator[list[torch.Tensor]]:
        """Record the tapped units' grids for the forward pass inside the block only."""
        self.outputs = [None] * len(self.units)
        try:
            yield self.outputs
        finally:
            self.outputs = None

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def aligned(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every (student, teacher) pair of grids as tokens on its common grid, as the two lists the loss takes."""
    pairs = [aligned_tokens(s, t) for s, t in zip(student, teacher)]
    return [s for s, _ in pairs], [t for _, t in pairs]


def aligned_tokens(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grids (B, Hs, Ws, Ds) and (B, Ht, Wt, Dt) as tokens (B, N, D) on the common, coarser grid."""
    size = min(student.shape[1], teacher.shape[1]), min(student.shape[2], teacher.shape[2])
    return _tokens(student, size), _tokens(teacher, size)


def _tokens(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(grid.shape[1:3]) != size:
        grid = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
    return grid.flatten(1, 2)
