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
    """L2-normalise each token, contiguous; half precision (autocast) is computed in float32."""
    if f.dtype in (torch.float16, torch.bfloat16):
        f = f.float()
    return F.normalize(f, dim=-1, eps=EPS).contiguous()


def _check(fs: torch.Tensor, ft: torch.Tensor) -> None:
    if fs.ndim != 3 or ft.ndim != 3 or fs.shape[:2] != ft.shape[:2]:
        raise ValueError(f"student and teacher tokens must be (B, N, D) with equal B and N; "
                         f"got {tuple(fs.shape)} and {tuple(ft.shape)}")


def _difference(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """S S^T - T T^T for token sets (..., M, D): the student's product accumulates onto the teacher's map."""
    teacher = t @ t.transpose(-1, -2)
    fused = teacher.baddbmm_ if s.ndim == 3 else teacher.addmm_
    return fused(s, s.transpose(-1, -2), beta=-1)


def _mse(diff: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(diff).square() / diff.numel()


class _PairRelations(torch.autograd.Function):
    """One layer pair's intra-image, inter-image and random-sampled losses (0 for a term not asked) from raw
    student tokens fs (B, N, D_s) and unit teacher tokens t (B, N, D_t), t constant.

    Each term is the mean over entries of D^2, D = S S^T - T T^T over its token sets, S the unit student tokens;
    one M x M map is held per term. D is symmetric, so a term's gradient is one matmul, 4 D S / numel, where
    autograd would run two; the three meet before one pass back through the normalisation, (g - s (s . g)) / |f|.
    """

    @staticmethod
    def forward(ctx, fs: torch.Tensor, t: torch.Tensor, intra: bool, inter: bool, idx: torch.Tensor | None):
        norm = torch.linalg.vector_norm(fs, dim=-1, keepdim=True)
        s = (fs / norm.clamp_min(EPS)).contiguous()  # F.normalize's arithmetic
        diffs = (_difference(s, t) if intra else None,
                 _difference(s.transpose(0, 1), t.transpose(0, 1)) if inter else None,
                 _difference(s.flatten(0, 1)[idx], t.flatten(0, 1)[idx]) if idx is not None else None)
        ctx.save_for_backward(s, norm, idx, *diffs)
        return tuple(fs.new_zeros(()) if d is None else _mse(d) for d in diffs)

    @staticmethod
    def backward(ctx, g_intra: torch.Tensor, g_inter: torch.Tensor, g_random: torch.Tensor):
        s, norm, idx, d_intra, d_inter, d_random = ctx.saved_tensors
        grad = torch.zeros_like(s) if d_intra is None else (d_intra @ s).mul_(g_intra * 4 / d_intra.numel())
        if d_inter is not None:
            s_t = s.transpose(0, 1)
            grad.transpose(0, 1).add_((d_inter @ s_t).mul_(g_inter * 4 / d_inter.numel()))
        if d_random is not None:
            picked = (d_random @ s.flatten(0, 1)[idx]).mul_(g_random * 4 / d_random.numel())
            grad.view(-1, grad.shape[-1]).index_add_(0, idx, picked)
        # through s = f / max(|f|, eps): the radial part drops out where |f| >= eps
        radial = (s * grad).sum(-1, keepdim=True).mul_(norm >= EPS)
        return grad.sub_(s * radial).div_(norm.clamp_min(EPS)), None, None, None, None


def _pair(fs: torch.Tensor, ft: torch.Tensor, intra: bool, inter: bool, idx: torch.Tensor | None):
    _check(fs, ft)
    if fs.dtype in (torch.float16, torch.bfloat16):
        fs = fs.float()
    return _PairRelations.apply(fs, _unit(ft.detach()), intra, inter, idx)


def _sample(n: int, k: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """K of n token indices without replacement, K clamped to n (the same draw serves both sides)."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=where)[: min(k, n)].to(device)


def intra_image_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Patch-to-patch relations within each image: mean over b, i, j of (A_b^S - A_b^T)^2, A_b is N x N."""
    return _pair(fs, ft, True, False, None)[0]


def inter_image_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Image-to-image relations at each patch position: mean over n, i, j; C_n is B x B."""
    return _pair(fs, ft, False, True, None)[1]


def random_sampled_loss(fs: torch.Tensor, ft: torch.Tensor, k: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Relations among K tokens drawn without replacement from all B*N (same draw for both sides).

    K is clamped to B*N; with K = B*N this is the full (BN) x (BN) relation loss up to token order.
    """
    return _pair(fs, ft, False, False, _sample(fs.shape[0] * fs.shape[1], k, fs.device, generator))[2]


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
                idx = _sample(fs.shape[0] * fs.shape[1], self.k, fs.device, generator) if self.w_random else None
                for name, value in zip(weights, _pair(fs, ft, bool(self.w_intra), bool(self.w_inter), idx)):
                    if weights[name]:
                        sums[name] = sums[name] + value if name in sums else value
        scale = self.beta / len(student)
        return {name: scale * weights[name] * total for name, total in sums.items()}
