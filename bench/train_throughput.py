"""Training throughput on this CPU against its FLOP floor: images/s of the default teacher and of the
distill stage per epoch (the real pipeline, `manifold-edge run --until distill` on a subset), and the
fraction of the floor = this host's fp32 matmul peak (torch.mm, 1024^3, the run's thread count, measured
in the same run) / training FLOPs per image (teacher: 3x its forward; distill: 3x the student's forward +
the teacher's forward; the manifold terms are not counted). Writes JSON with the host's CPU flags.

    .venv/bin/python bench/train_throughput.py [--subset 12000] [--epochs 2] [--nproc 1] [--set KEY=VALUE ...]
                                               [--out bench/results/train_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from distill_throughput import cpu_name, run_pipeline  # noqa: E402

from pipeline.core.fileio import write_json  # noqa: E402
from stages.flops import flops_per_image  # noqa: E402
from stages.models import load_model  # noqa: E402
from targets.agent.host import cpu_flags, int8_instructions  # noqa: E402


def matmul_peak(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """fp32 GFLOP/s of torch.mm on n x n matrices with `threads` threads (median of 1-run samples)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    samples, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 5:
        start = time.perf_counter()
        a @ b
        samples.append(time.perf_counter() - start)
    samples.sort()
    return 2 * n ** 3 / samples[len(samples) // 2] / 1e9


def epochs_of(out: Path, stage: str) -> list[dict]:
    folder = next(p for p in (out / "runs" / ".cache").glob(f"{stage}-*") if p.suffix != ".partial")
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()], folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=12000, help="training images (data.subset)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each stage (the last is reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the run, all processes together")
    parser.add_argument("--nproc", type=int, default=1, help="training processes (run.nproc; DDP over gloo)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    args = parser.parse_args()
    overrides = [f"data.subset={args.subset}", "run.device='cpu'", f"run.threads={args.threads // args.nproc}",
                 f"teacher.epochs={args.epochs}", f"distill.epochs={args.epochs}", *args.extra]
    peak_before = matmul_peak(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "pipeline.toml").write_text((ROOT / "pipeline.toml").read_text())
        wall, _ = run_pipeline(out, overrides, args.nproc, "distill")
        teacher_rows, teacher_dir = epochs_of(out, "teacher")
        distill_rows, distill_dir = epochs_of(out, "distill")
        teacher, _ = load_model(teacher_dir / "model.pt")
        student, _ = load_model(distill_dir / "model.pt")
        shape = (teacher.patch_embed.proj[0].in_channels, *teacher.patch_embed.img_size)
        teacher_fwd, student_fwd = flops_per_image(teacher, shape), flops_per_image(student, shape)
    peak = max(peak_before, matmul_peak(args.threads))
    per_image = {"teacher": 3 * teacher_fwd, "distill": 3 * student_fwd + teacher_fwd}
    stages = {}
    for stage, rows in (("teacher", teacher_rows), ("distill", distill_rows)):
        floor = peak * 1e9 / per_image[stage]
        stages[stage] = {"images_per_s_by_epoch": [r["images_per_s"] for r in rows],
                         "train_mflops_per_image": round(per_image[stage] / 1e6, 2),
                         "floor_images_per_s": round(floor, 1),
                         "fraction_of_floor": round(rows[-1]["images_per_s"] / floor, 3)}
    result = {"host": {"cpu": cpu_name(), "flags": cpu_flags(), "int8": int8_instructions()},
              "threads": args.threads, "processes": args.nproc, "matmul_peak_gflops": round(peak, 1),
              "torch": torch.__version__,
              "overrides": overrides, "run_wall_s": round(wall, 1), "stages": stages,
              "command": " ".join(["bench/train_throughput.py", *sys.argv[1:]])}
    write_json(Path(args.out), result)
    table = Table(title=f"training throughput on {cpu_name()} ({', '.join(cpu_flags())}), "
                        f"matmul peak {peak:.0f} GFLOP/s at {args.threads} threads")
    for column in ("stage", "img/s per epoch", "train MFLOPs/img", "floor img/s", "of floor"):
        table.add_column(column)
    for stage, s in stages.items():
        table.add_row(stage, ", ".join(f"{v:.0f}" for v in s["images_per_s_by_epoch"]),
                      f"{s['train_mflops_per_image']:.1f}", f"{s['floor_images_per_s']:.0f}",
                      f"{s['fraction_of_floor']:.0%}")
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
