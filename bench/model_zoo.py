"""The model zoo: small configs of real timm families, each through distill -> export -> quantize -> evaluate.

Shrunk (a few blocks, narrow widths, 32-64 px Fashion-MNIST) so the whole zoo runs in minutes on a laptop CPU.
`python bench/model_zoo.py` writes bench/results/model_zoo.json, the source of the README's models table.
"""
from __future__ import annotations

# name -> (timm model, overrides, img_size)
ZOO: dict[str, tuple[str, dict, int]] = {
    "deit_tiny_distilled": ("deit_tiny_distilled_patch16_224",
                            dict(patch_size=4, embed_dim=32, depth=2, num_heads=2), 32),
    "cait_xxs24": ("cait_xxs24_224", dict(patch_size=4, embed_dim=32, depth=2, num_heads=2, depth_token_only=1), 32),
    "vit_registers": ("vit_little_patch16_reg4_gap_256", dict(patch_size=4, embed_dim=32, depth=2, num_heads=2), 32),
    "swin_tiny": ("swin_tiny_patch4_window7_224",
                  dict(patch_size=2, window_size=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)), 32),
    "levit_128s": ("levit_128s", dict(embed_dim=(32, 48, 64), depth=(1, 1, 1), num_heads=(1, 2, 2), key_dim=8), 64),
    "efficientvit_m0": ("efficientvit_m0", dict(embed_dim=(16, 32, 48), depth=(1, 1, 1), num_heads=(1, 1, 1)), 64),
    "mobilevit_xxs": ("mobilevit_xxs", {}, 64),
    "mobilenetv3_small": ("mobilenetv3_small_050", {}, 32),
    "resnet18": ("resnet18", dict(layers=(1, 1, 1, 1)), 32),
}
