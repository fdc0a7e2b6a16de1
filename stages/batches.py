"""Reading the data stage's artifact and iterating over it in normalised, optionally augmented batches."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.fileio import read_json


@dataclass
class Batches:
    """One split held in memory as uint8; yields float batches normalised with the dataset's mean/std."""

    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N
    mean: torch.Tensor
    std: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def subset(self, idx) -> Batches:
        """These images at `idx` (indices, in that order), normalised the same way."""
        return Batches(self.images[idx], self.labels[idx], self.mean, self.std)

    def head(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first n images (normalised, not augmented) and their labels, as numpy arrays."""
        x, y = next(self.iterate(min(n, len(self))))
        return x.numpy(), y.numpy()

    def iterate(self, batch_size: int, device: str = "cpu", order: torch.Generator | None = None,
                augmentation: torch.Generator | None = None, shift: int = 0, flip: bool = False,
                shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in order, or shuffled by the `order` generator (a training epoch), augmented with draws
        from the `augmentation` generator when one is given and shift or flip is asked for.

        With shard = (rank, processes), each global batch of batch_size is split between the processes
        (this one gets every processes-th image from its rank on); the shuffle and the augmentation are
        drawn for the whole batch from the shared generators, so the processes together see exactly the
        batches one process would. A training epoch's last batch is trimmed to a multiple of the processes.
        """
        rank, processes = shard
        shuffled = order is not None
        order = torch.randperm(len(self), generator=order) if shuffled else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            if shuffled and processes > 1:
                idx = idx[: len(idx) - len(idx) % processes]
            if not len(idx):
                continue
            mine = slice(rank, None, processes)
            x, y = self.images[idx[mine]], self.labels[idx[mine]]
            if device == "cuda":  # the uint8 batch crosses (a quarter of the float bytes); the rest runs there
                x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            x = x.float().div_(255)
            if augmentation is not None and (shift or flip):
                x = augment(x, augmentation, shift, flip, drawn=len(idx), keep=mine)
            yield (x - self.mean.to(x.device)) / self.std.to(x.device), y


def augment(x: torch.Tensor, generator: torch.Generator, shift: int, flip: bool, drawn: int | None = None,
            keep: slice = slice(None)) -> torch.Tensor:
    """Random translation by up to `shift` pixels (zero fill) and random horizontal flips, per image.

    The draws are made for `drawn` images (default: x's) and x gets the `keep` share of them: one
    process's images out of a whole batch, augmented as a single process would augment them.
    """
    drawn = len(x) if drawn is None else drawn
    on = x.device  # the draws come from the (CPU) generator, so every device sees the same augmentation
    if shift:
        dy = torch.randint(0, 2 * shift + 1, (drawn, 1, 1), generator=generator)[keep].to(on)
        dx = torch.randint(0, 2 * shift + 1, (drawn, 1, 1), generator=generator)[keep].to(on)
    if flip:
        flipped = (torch.rand(drawn, generator=generator) < 0.5)[keep].to(on)
    n, _, h, w = x.shape
    if shift:
        padded = F.pad(x, (shift, shift, shift, shift))
        rows = (torch.arange(h, device=on).view(1, h, 1) + dy).expand(n, h, w)
        cols = (torch.arange(w, device=on).view(1, 1, w) + dx).expand(n, h, w)
        batch = torch.arange(n, device=on).view(n, 1, 1).expand(n, h, w)
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if flip:
        x = torch.where(flipped.view(n, 1, 1, 1), x.flip(-1), x)
    # NCHW strides, also for one channel: the gather leaves channels-last strides, which .contiguous() keeps
    # when C = 1, and they steer oneDNN into its AVX2 1x1 strided-conv weight-gradient kernel, which corrupts
    # the heap for 1 input channel (a RepVGG stem on grayscale: glibc aborts, segfaults or hangs).
    return x.clone(memory_format=torch.contiguous_format)


@dataclass
class Dataset:
    meta: dict
    train: Batches
    val: Batches
    test: Batches


def load_dataset(folder: Path) -> Dataset:
    """The data stage's artifact: data.npz (uint8 splits) and meta.json (classes, mean, std)."""
    meta = read_json(folder / "meta.json")
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with np.load(folder / "data.npz", allow_pickle=False) as arrays:  # never build objects from the cache
        splits = {name: Batches(torch.from_numpy(arrays[f"x_{name}"]), torch.from_numpy(arrays[f"y_{name}"]),
                                mean, std) for name in ("train", "val", "test")}
    return Dataset(meta, **splits)
