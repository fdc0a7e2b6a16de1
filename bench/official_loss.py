"""The authors' manifold loss as their code wires it, re-expressed (not copied) for the benchmarks and tests:
`mf_loss` and `layer_mf_loss` of losses.py in github.com/Hao840/manifold-distillation, commit
1096b826d7d20e4560324e8682222b3129adc309.

Per layer pair: normalise both sides once, then for each term build both relation maps with autograd, subtract,
square and average; each term's weighted values are averaged over the pairs. Names follow the authors: "patch"
is our intra-image term, "sample" our inter-image term, "rand" our random-sampled term. Two differences from
their code, neither changing the arithmetic: the tokens come with prefix tokens already dropped (their code
slices them off each block output), and the draw of the random term takes an optional generator (None: the
global stream, as theirs) so that a test can hand both losses the same draw.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_mf_loss(fs: torch.Tensor, ft: torch.Tensor, k: int, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(patch, sample, rand) relation losses of one pair of (B, N, D) token tensors."""
    fs, ft = F.normalize(fs, dim=-1), F.normalize(ft, dim=-1)

    def relation(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        product = torch.bmm if s.ndim == 3 else torch.mm
        diff = product(t, t.transpose(-1, -2)) - product(s, s.transpose(-1, -2))
        return (diff * diff).mean()

    patch = relation(fs, ft)
    sample = relation(fs.permute(1, 0, 2), ft.permute(1, 0, 2))
    b, n, _ = fs.shape
    pick = torch.randperm(b * n, generator=generator)[:k]
    rand = relation(fs.reshape(b * n, -1)[pick], ft.reshape(b * n, -1)[pick])
    return patch, sample, rand


def mf_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], k: int, w_sample: float, w_patch: float,
            w_rand: float, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sample, patch, rand): each term's weighted loss averaged over the layer pairs (their beta comes after)."""
    terms: tuple[list, list, list] = ([], [], [])
    for fs, ft in zip(student, teacher):
        patch, sample, rand = layer_mf_loss(fs, ft, k, generator)
        terms[0].append(w_sample * sample)
        terms[1].append(w_patch * patch)
        terms[2].append(w_rand * rand)
    return tuple(sum(values) / len(values) for values in terms)
