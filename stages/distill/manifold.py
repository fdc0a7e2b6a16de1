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


class _RelationMSE(torch.autograd.Function):
    """Mean over entries of (S S^T - T T^T)^2 for unit tokens S (..., M, D_s) and T (..., M, D_t), T constant.

    Holds one M x M map: the teacher's map is the bias of one fused multiply-add that leaves the difference D.
    D is symmetric, so the gradient 4 D S / numel is one matmul where autograd would run two (one per factor
    of S S^T) and scale D elementwise first.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        fused = torch.baddbmm if s.ndim == 3 else torch.addmm
        diff = fused(t @ t.transpose(-1, -2), s, s.transpose(-1, -2), beta=-1)
        ctx.save_for_backward(s, diff)
        return torch.linalg.vector_norm(diff).square() / diff.numel()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s, diff = ctx.saved_tensors
        return (diff @ s).mul_(grad * 4 / diff.numel()), None


def _relation_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean over entries of (S S^T - T T^T)^2; gradients reach S only (T is the teacher's)."""
    return _RelationMSE.apply(s, t.detach())


def _sample(s: torch.Tensor, t: torch.Tensor, k: int, generator: torch.Generator | None):
    """The same K of the B*N tokens (without replacement) from both sides, K clamped to B*N."""
    s, t = s.flatten(0, 1), t.flatten(0, 1)
    device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randperm(s.shape[0], generator=generator, device=device)[: min(k, s.shape[0])].to(s.device)
    return s[idx], t[idx]


def intra_image_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Patch-to-patch relations within each image: mean over b, i, j of (A_b^S - A_b^T)^2, A_b is N x N."""
    _check(fs, ft)
    return _relation_mse(_unit(fs), _unit(ft.detach()))


def inter_image_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Image-to-image relations at each patch position: mean over n, i, j; C_n is B x B."""
    _check(fs, ft)
    return _relation_mse(_unit(fs).transpose(0, 1), _unit(ft.detach()).transpose(0, 1))


def random_sampled_loss(fs: torch.Tensor, ft: torch.Tensor, k: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Relations among K tokens drawn without replacement from all B*N (same draw for both sides).

    K is clamped to B*N; with K = B*N this is the full (BN) x (BN) relation loss up to token order.
    """
    _check(fs, ft)
    return _relation_mse(*_sample(_unit(fs), _unit(ft.detach()), k, generator))


class ManifoldLoss(nn.Module):
    """beta * mean over layer pairs of (w_intra L_intra + w_inter L_inter + w_random L_random).

    Tokens are normalised once per pair and shared by the terms; a term whose weight is 0 is not
    computed. `forward` returns each term's weighted contribution (summed over pairs, scaled by
    beta / pairs), so the values add up to the manifold loss.
    """

    def __init__(self, w_intra: float = 4.0, w_inter: float = 0.1, w_random: float = 0.2, k: int = 192,
                 beta: float = 1.0):
        super().__init__()
        self.w_intra, self.w_inter, self.w_random, self.k, self.beta = w_intra, w_inter, w_random, k, beta

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor],
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if len(student) != len(teacher) or not student:
            raise ValueError(f"need matching, non-empty layer lists; got {len(student)} and {len(teacher)}")
        weights = {"intra": self.w_intra, "inter": self.w_inter, "random": self.w_random}
        sums: dict[str, torch.Tensor] = {}
        with torch.autocast(student[0].device.type, enabled=False):  # relations in float32 under AMP
            for fs, ft in zip(student, teacher):
                _check(fs, ft)
                s, t = _unit(fs), _unit(ft.detach())
                parts = {}
                if self.w_intra:
                    parts["intra"] = _relation_mse(s, t)
                if self.w_inter:
                    parts["inter"] = _relation_mse(s.transpose(0, 1), t.transpose(0, 1))
                if self.w_random:
                    parts["random"] = _relation_mse(*_sample(s, t, self.k, generator))
                for name, value in parts.items():
                    sums[name] = sums[name] + value if name in sums else value
        scale = self.beta / len(student)
        return {name: scale * weights[name] * total for name, total in sums.items()}
