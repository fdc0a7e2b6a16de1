"""Training step in NCHW vs channels-last (`run.channels_last`), the arms interleaved in one process: the default
teacher's step (forward, backward, fused AdamW) and the distill step of bench/loss_cost.py at pipeline.toml's shapes
(the teacher's forward in inference mode with its layer taps, the student's forward and backward under soft KD +
the manifold loss), the models placed on the CPU by the stages' own `place`. Whole-pipeline runs on a shared host
differ by more than the effect between processes; here every round runs each arm for `--steps` steps, arms
rotated, and the ratio is paired within a round (median, bootstrap 95% interval). Writes JSON with the host's CPU
flags.

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
from loss_cost import Setting, interleaved, median_ci, ratios, shapes  # noqa: E402

from pipeline.core.fileio import write_json  # noqa: E402
from pipeline.core.stage import Accel  # noqa: E402
from stages.models import create_model  # noqa: E402
from stages.training import place  # noqa: E402
from targets.agent.host import cpu_flags  # noqa: E402

LAYOUTS = {"nchw": Accel(channels_last=False), "channels_last": Accel(channels_last=True)}


def teacher_step(shape: dict, accel: Accel):
    """One training step of pipeline.toml's teacher, as the teacher stage takes it."""
    torch.manual_seed(0)
    data = {"in_chans": shape["chans"], "num_classes": shape["classes"], "img_size": shape["img"]}
    net = place(create_model("teacher", *shape["teacher"], data)[0], "cpu", accel).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    x = torch.randn(shape["batch"], shape["chans"], shape["img"], shape["img"])
    y = torch.randint(0, shape["classes"], (shape["batch"],))

    def step():
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def distill_step(shape: dict, accel: Accel):
    """One distill step (KD + the manifold loss) of bench/loss_cost.py, its models placed as the stages place them."""
    setting = Setting(shape, accel)
    return lambda: setting.step("ours")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="steps per arm per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_layout.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = shapes()["default"]
    batch = shape["batch"]
    result = {"host": {"cpu": cpu_name(), "flags": cpu_flags()}, "threads": args.threads, "batch": batch,
              "rounds": args.rounds, "steps_per_round": args.steps, "torch": torch.__version__, "steps": {},
              "command": " ".join(["bench/train_layout.py", *sys.argv[1:]])}
    for name, build in (("teacher", teacher_step), ("distill", distill_step)):
        steps = {layout: build(shape, accel) for layout, accel in LAYOUTS.items()}
        arms = {layout: (lambda s=s: [s() for _ in range(args.steps)]) for layout, s in steps.items()}
        times = interleaved(arms, args.rounds, name)
        result["steps"][name] = {
            "images_per_s": {layout: median_ci([batch * args.steps / t for t in times[layout]["wall"]])
                             for layout in LAYOUTS},
            "speed_ratio_channels_last": {clock: {"median": round(1 / r["median"], 4),
                                                  "ci95": [round(1 / r["ci95"][1], 4), round(1 / r["ci95"][0], 4)]}
                                          for clock, r in ratios(times, "channels_last", "nchw").items()}}
    write_json(Path(args.out), result)
    table = Table(title=f"training step, NCHW vs channels-last, on {cpu_name()} ({', '.join(cpu_flags())}), "
                        f"{args.threads} threads, batch {batch}")
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
