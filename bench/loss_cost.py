"""What the manifold loss costs: one optimisation step with KD only vs KD + manifold, and the peak
memory of the decoupled loss vs the full (BN) x (BN) relation loss. Writes JSON, prints a table.

    .venv/bin/python bench/loss_cost.py [--quick] [--out bench/results/loss_cost.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.fileio import write_json  # noqa: E402
from stages.distill import kd_loss  # noqa: E402
from stages.distill.features import TokenTap, aligned  # noqa: E402
from stages.distill.manifold import ManifoldLoss, _relation_mse, _unit  # noqa: E402

SHAPES = {
    # the paper's: DeiT-Tiny student (12 x 192) <- a 24-block, 384-wide teacher, 224 px, patch 16
    "reference": dict(batch=64, img=224, patch=16, chans=3, student=(12, 192, 3), teacher=(24, 384, 6),
                      pairs=([0, 1, 2, 3, 8, 9, 10, 11], [0, 1, 2, 3, 20, 21, 22, 23]), steps=3),
    # the default pipeline's scale: 28 px Fashion-MNIST, patch 4 (49 tokens)
    "cpu-small": dict(batch=128, img=28, patch=4, chans=1, student=(4, 64, 2), teacher=(4, 96, 3),
                      pairs=([0, 3], [0, 3]), steps=20),
}


def _vit(depth: int, dim: int, heads: int, shape: dict) -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=shape["img"], patch_size=shape["patch"],
                             in_chans=shape["chans"], num_classes=10, embed_dim=dim, depth=depth, num_heads=heads)


def step_seconds(shape: dict, manifold: bool, device: str) -> float:
    torch.manual_seed(0)
    student, teacher = _vit(*shape["student"], shape), _vit(*shape["teacher"], shape).eval()
    student.to(device), teacher.to(device)
    opt = torch.optim.AdamW(student.parameters())
    taps = (TokenTap(student, shape["pairs"][0], "student"), TokenTap(teacher, shape["pairs"][1], "teacher"))
    loss_fn, rng = ManifoldLoss(), torch.Generator().manual_seed(0)
    x = torch.randn(shape["batch"], shape["chans"], shape["img"], shape["img"], device=device)
    times = []
    for i in range(shape["steps"] + 1):
        start = time.perf_counter()
        with torch.no_grad(), taps[1].capture() as t_tokens:
            t_logits = teacher(x)
        with taps[0].capture() as s_tokens:
            s_logits = student(x)
        loss = kd_loss(s_logits, t_logits, "soft", 1.0)
        if manifold:
            loss = loss + sum(loss_fn(*aligned(s_tokens, t_tokens), rng).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def full_relation_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """The undecoupled loss over all B*N tokens, with the same memory-lean code as the decoupled terms."""
    return _relation_mse(_unit(fs).flatten(0, 1), _unit(ft).flatten(0, 1))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def loss_peak_mb(shape: dict, full: bool, device: str) -> float:
    """Extra peak memory of forward + backward of one layer pair's loss (MB).

    On CPU it runs in a fresh process (so freed heap pages of earlier work do not hide the
    allocation) and reads the growth of the peak resident set size (VmHWM).
    """
    if device == "cpu":
        out = subprocess.run([sys.executable, __file__, "--memory-probe", json.dumps(shape), str(int(full))],
                             capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    n = (shape["img"] // shape["patch"]) ** 2
    fs = torch.randn(shape["batch"], n, shape["student"][1], device=device, requires_grad=True)
    ft = torch.randn(shape["batch"], n, shape["teacher"][1], device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _loss(full)(fs, ft).backward()
    return (torch.cuda.max_memory_allocated() - base) / 1e6


def _loss(full: bool):
    return full_relation_loss if full else (lambda a, b: sum(ManifoldLoss()([a], [b]).values()))


def _memory_probe(shape: dict, full: bool) -> None:
    n = (shape["img"] // shape["patch"]) ** 2
    warm = torch.randn(2, 4, 8, requires_grad=True)  # loads kernels and thread pools before the baseline
    _loss(full)(warm, torch.randn(2, 4, 8)).backward()
    fs = torch.randn(shape["batch"], n, shape["student"][1], requires_grad=True)
    ft = torch.randn(shape["batch"], n, shape["teacher"][1])
    base = _status_kb("VmRSS")
    _loss(full)(fs, ft).backward()
    print((_status_kb("VmHWM") - base) / 1e3)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-probe":
        return _memory_probe(json.loads(sys.argv[2]), sys.argv[3] == "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the small CPU shapes")
    parser.add_argument("--out", default="bench/results/loss_cost.json")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "threads": torch.get_num_threads(), "shapes": {}}
    table = Table(title=f"manifold loss cost on {device} ({results['threads']} threads)")
    for col in ("shapes", "KD step s", "KD+manifold step s", "overhead %", "decoupled MB", "full MB", "memory ratio"):
        table.add_column(col, justify="right")
    for name, shape in SHAPES.items():
        if args.quick and name == "reference":
            continue
        kd, mf = step_seconds(shape, False, device), step_seconds(shape, True, device)
        dec, full = loss_peak_mb(shape, False, device), loss_peak_mb(shape, True, device)
        row = {"kd_step_s": round(kd, 4), "kd_manifold_step_s": round(mf, 4),
               "overhead_pct": round(100 * (mf - kd) / kd, 1), "decoupled_peak_mb": round(dec, 1),
               "full_peak_mb": round(full, 1), "memory_ratio": round(full / max(dec, 1e-3), 1),
               "shape": {k: v for k, v in shape.items() if k != "steps"}}
        results["shapes"][name] = row
        table.add_row(name, f"{kd:.3f}", f"{mf:.3f}", f"{row['overhead_pct']:.1f}", f"{dec:.1f}", f"{full:.1f}",
                      f"{row['memory_ratio']:.0f}x")
    write_json(Path(args.out), results)
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
