"""Forward FLOPs per image as torch's flop counter counts them, fused attention included."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q K^T and attention x V of a fused attention call: 2*B*H*L*S*(E + Ev)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Fused attention ops torch's counter has no formula for: F.scaled_dot_product_attention on CPU runs
# _scaled_dot_product_flash_attention_for_cpu, which it would count as 0 FLOPs (a ViT's Q K^T and A V).
UNCOUNTED_SDPA = [op for op in (getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None),)
                  if op is not None]


def flops_per_image(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one image (torch.utils.flop_counter counts a multiply-add as 2), fused attention
    included (see UNCOUNTED_SDPA).

    Parameters are frozen first: the counter's module tracker hooks the gradients of every tensor a block
    receives, and fails on a parameter passed as an argument (CaiT's class token)."""
    model.requires_grad_(False)
    counter = FlopCounterMode(display=False, custom_mapping={op: _sdpa_flops for op in UNCOUNTED_SDPA})
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return int(counter.get_total_flops())
