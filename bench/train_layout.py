"""Training step in NCHW vs channels-last (`run.channels_last`), the arms interleaved in one process: the default
teacher's step (forward, backward, fused AdamW) and the distill stage's step (the teacher's forward in inference
mode with its layer taps, the student's forward and backward under soft KD + the manifold loss), each model
placed on the CPU by the stages' own `place`. Whole-pipeline runs on a shared host differ by more than the
effect between processes; here every round runs each arm for `--steps` steps, arms rotated, and the ratio is
paired within a round (median, bootstrap 95% interval). Writes JSON with the host's CPU flags.

    .venv/bin/python bench/train_layout.py [--rounds 16] [--steps 10] [--threads 2]
                                           [--out bench/results/train_layout.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from distill_throughput import cpu_name  # noqa: E402
from loss_cost import interleaved, median_ci, ratios  # noqa: E402

from pipeline.fileio import write_json  # noqa: E402
from pipeline.stage import Accel  # noqa: E402
from stages.distill import DistillConfig  # noqa: E402
from stages.distill.features import TokenTap, aligned  # noqa: E402
from stages.distill.manifold import ManifoldLoss  # noqa: E402
from stages.distill.train import kd_loss  # noqa: E402
from stages.models import create_model  # noqa: E402
from stages.training import place  # noqa: E402
from targets.agent import cpu_flags  # noqa: E402

DATA = {"in_chans": 1, "num_classes": 10, "img_size": 32}
LAYOUTS = {"nchw": Accel(channels_last=False), "channels_last": Accel(channels_last=True)}


def model(role: str, name: str, accel: Accel) -> torch.nn.Module:
    torch.manual_seed(0)
    return place(create_model(role, name, {}, DATA)[0], "cpu", accel)


def teacher_step(accel: Accel, x: torch.Tensor, y: torch.Tensor):
    net = model("teacher", "convstem_vit_small", accel).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)

    def step():
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def distill_step(accel: Accel, x: torch.Tensor, y: torch.Tensor):
    cfg = DistillConfig()
    teacher = model("teacher", "convstem_vit_small", accel).requires_grad_(False).eval()
    student = model("student", "convstem_vit_tiny", accel).train()
    taps = TokenTap(student, [0, 3], "student"), TokenTap(teacher, [0, 3], "teacher")
    manifold = ManifoldLoss(cfg.w_intra, cfg.w_inter, cfg.w_random, cfg.k, cfg.beta)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, fused=True)
    rng = torch.Generator().manual_seed(0)

    def step():
        with torch.inference_mode(), taps[1].capture() as t_tokens:
            t_logits = teacher(x)
        t_logits, t_tokens = t_logits.clone(), [t.clone() for t in t_tokens]
        with taps[0].capture() as s_tokens:
            logits = student(x)
        loss = (1 - cfg.alpha) * F.cross_entropy(logits, y) + cfg.alpha * kd_loss(logits, t_logits, cfg.kd,
                                                                                  cfg.temperature)
        loss = loss + sum(manifold(*aligned(list(s_tokens), t_tokens), rng).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="steps per arm per round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_layout.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = torch.randn(args.batch, 1, 32, 32), torch.randint(0, 10, (args.batch,))
    result = {"host": {"cpu": cpu_name(), "flags": cpu_flags()}, "threads": args.threads, "batch": args.batch,
              "rounds": args.rounds, "steps_per_round": args.steps, "torch": torch.__version__, "steps": {},
              "command": " ".join(["bench/train_layout.py", *sys.argv[1:]])}
    for name, build in (("teacher", teacher_step), ("distill", distill_step)):
        steps = {layout: build(accel, x, y) for layout, accel in LAYOUTS.items()}
        arms = {layout: (lambda s=s: [s() for _ in range(args.steps)]) for layout, s in steps.items()}
        times = interleaved(arms, args.rounds, name)
        result["steps"][name] = {
            "images_per_s": {layout: median_ci([args.batch * args.steps / t for t in times[layout]["wall"]])
                             for layout in LAYOUTS},
            "speed_ratio_channels_last": {clock: {"median": round(1 / r["median"], 4),
                                                  "ci95": [round(1 / r["ci95"][1], 4), round(1 / r["ci95"][0], 4)]}
                                          for clock, r in ratios(times, "channels_last", "nchw").items()}}
    write_json(Path(args.out), result)
    table = Table(title=f"training step, NCHW vs channels-last, on {cpu_name()} ({', '.join(cpu_flags())}), "
                        f"{args.threads} threads, batch {args.batch}")
    for column in ("step", "NCHW img/s", "channels-last img/s", "speed ratio (wall)", "95% interval"):
        table.add_column(column)
    for name, s in result["steps"].items():
        ratio = s["speed_ratio_channels_last"]["wall"]
        table.add_row(name, f"{s['images_per_s']['nchw']['median']:.0f}",
                      f"{s['images_per_s']['channels_last']['median']:.0f}", f"{ratio['median']:.3f}",
                      f"{ratio['ci95'][0]:.3f}-{ratio['ci95'][1]:.3f}")
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
