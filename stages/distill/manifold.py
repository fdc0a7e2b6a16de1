"""Fine-grained manifold distillation loss (Hao et al., NeurIPS 2022), decoupled into three terms.

Each term compares cosine-similarity ("relation") maps of student and teacher patch tokens, so the
student and teacher widths never need to match. Normalisation follows the authors' code: every term
is a mean over matrix entries, which is what makes the reference weights 4 / 0.1 / 0.2 work.
Inputs are raw patch tokens, (B, N, D_s) and (B, N, D_t); prefix tokens must already be dropped.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-12


def _unit(f: torch.Tensor) -> torch.Tensor:
    """L2-normalise each token; half precision (autocast) is computed in float32."""
    if f.dtype in (torch.float16, torch.bfloat16):
        f = f.float()
    return F.normalize(f, dim=-1, eps=EPS)


def _check(fs: torch.Tensor, ft: torch.Tensor) -> None:
    if fs.ndim != 3 or ft.ndim != 3 or fs.shape[:2] != ft.shape[:2]:
        raise ValueError(f"student and teacher tokens must be (B, N, D) with equal B and N; "
                         f"got {tuple(fs.shape)} and {tuple(ft.shape)}")


def intra_image_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Patch-to-patch relations within each image: mean over b, i, j of (A_b^S - A_b^T)^2, A_b is N x N."""
    _check(fs, ft)
    s, t = _unit(fs), _unit(ft.detach())
    return (s @ s.transpose(1, 2) - t @ t.transpose(1, 2)).pow(2).mean()


def inter_image_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Image-to-image relations at each patch position: mean over n, i, j; C_n is B x B."""
    _check(fs, ft)
    s, t = _unit(fs).transpose(0, 1), _unit(ft.detach()).transpose(0, 1)
    return (s @ s.transpose(1, 2) - t @ t.transpose(1, 2)).pow(2).mean()


def random_sampled_loss(fs: torch.Tensor, ft: torch.Tensor, k: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Relations among K tokens drawn without replacement from all B*N (same draw for both sides).

    K is clamped to B*N; with K = B*N this is the full (BN) x (BN) relation loss up to token order.
    """
    _check(fs, ft)
    s, t = _unit(fs).flatten(0, 1), _unit(ft.detach()).flatten(0, 1)
    total = s.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randperm(total, generator=generator, device=device)[: min(k, total)].to(s.device)
    s, t = s[idx], t[idx]
    return (s @ s.T - t @ t.T).pow(2).mean()


class ManifoldLoss(nn.Module):
    """beta * mean over layer pairs of (w_intra L_intra + w_inter L_inter + w_random L_random).

    A term whose weight is 0 is not computed. `forward` returns the weighted contribution of each
    term (summed over pairs, scaled by beta / pairs) so that the three values add up to the loss.
    """

    def __init__(self, w_intra: float = 4.0, w_inter: float = 0.1, w_random: float = 0.2, k: int = 192,
                 beta: float = 1.0):
        super().__init__()
        self.w_intra, self.w_inter, self.w_random, self.k, self.beta = w_intra, w_inter, w_random, k, beta

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor],
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if len(student) != len(teacher) or not student:
            raise ValueError(f"need matching, non-empty layer lists; got {len(student)} and {len(teacher)}")
        scale = self.beta / len(student)
        terms = {}
        with torch.autocast(student[0].device.type, enabled=False):  # relations in float32 under AMP
            for name, weight, fn in (("intra", self.w_intra, intra_image_loss),
                                     ("inter", self.w_inter, inter_image_loss),
                                     ("random", self.w_random, None)):
                if weight == 0:
                    continue
                if fn is None:
                    parts = [random_sampled_loss(fs, ft, self.k, generator) for fs, ft in zip(student, teacher)]
                else:
                    parts = [fn(fs, ft) for fs, ft in zip(student, teacher)]
                terms[name] = scale * weight * torch.stack(parts).sum()
        return terms
