"""Patch tokens from chosen transformer blocks (forward hooks), aligned between student and teacher.

Prefix tokens (CLS, distillation token, registers) are dropped: a block's last H*W tokens are its patch
tokens, whether or not the family carries prefix tokens through its blocks (CaiT does not). When the
teacher's patch grid is an integer multiple of the student's (patch 2 vs patch 4), its token grid is
average-pooled to the student's; any other mismatch is a config error.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import UserError


def blocks_of(model: nn.Module, field: str) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or not hasattr(model, "patch_embed"):
        raise UserError(f"{field}.model = {type(model).__name__} is not a ViT-family model (no .blocks / "
                        ".patch_embed): use a timm VisionTransformer family model, or distill.manifold = false")
    return blocks


def grid_of(model: nn.Module) -> tuple[int, int]:
    return tuple(model.patch_embed.grid_size)


def default_layer_map(student_depth: int, teacher_depth: int) -> tuple[list[int], list[int]]:
    """The first and last quarter of blocks of each network, paired in order (at least one each)."""
    n = max(1, min(student_depth, teacher_depth) // 4)

    def ends(depth: int) -> list[int]:
        return sorted(set(range(n)) | set(range(depth - n, depth)))

    return ends(student_depth), ends(teacher_depth)


def checked_blocks(model: nn.Module, layers: list[int], field: str) -> nn.ModuleList:
    """The model's blocks, after checking that `layers` index them."""
    blocks = blocks_of(model, field)
    bad = [i for i in layers if not -len(blocks) <= i < len(blocks)]
    if bad:
        raise UserError(f"distill.{field}_layers: {bad} out of range for {len(blocks)} blocks "
                        f"(valid 0..{len(blocks) - 1})")
    return blocks


class TokenTap:
    """Captures the outputs of `layers` blocks during a forward pass as (B, N_patches, D) tensors."""

    def __init__(self, model: nn.Module, layers: list[int], field: str):
        blocks = checked_blocks(model, layers, field)
        height, width = grid_of(model)
        self.patches = height * width
        self.outputs: list[torch.Tensor] | None = None
        self.handles = [blocks[i].register_forward_hook(self._hook) for i in layers]

    def _hook(self, module, args, output) -> None:
        # The patch tokens are the last H*W: prefix tokens (class, distillation, registers) come first, and
        # some families carry none in these blocks (CaiT adds its class token after them).
        if self.outputs is not None:
            self.outputs.append(output[:, output.shape[1] - self.patches:])

    @contextmanager
    def capture(self) -> Iterator[list[torch.Tensor]]:
        """Record the tapped blocks' patch tokens for the forward passes inside the block only."""
        self.outputs = []
        try:
            yield self.outputs
        finally:
            self.outputs = None

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def grid_pooler(student_grid: tuple[int, int], teacher_grid: tuple[int, int]):
    """A function mapping teacher tokens (B, Ht*Wt, D) onto the student's grid (B, Hs*Ws, D)."""
    (hs, ws), (ht, wt) = student_grid, teacher_grid
    if (hs, ws) == (ht, wt):
        return lambda tokens: tokens
    if ht % hs or wt % ws:
        raise UserError(f"teacher patch grid {ht}x{wt} cannot be pooled onto the student's {hs}x{ws}: "
                        "the teacher's grid must be the student's times an integer (e.g. patch 2 vs 4); "
                        "change teacher.overrides.patch_size or student.overrides.patch_size")
    kernel = (ht // hs, wt // ws)

    def pool(tokens: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens.shape
        grid = tokens.transpose(1, 2).reshape(b, d, ht, wt)
        return F.avg_pool2d(grid, kernel).flatten(2).transpose(1, 2)

    return pool
