"""Distillation quality: test top-1 of the same student trained without KD, with soft KD, with KD + the
manifold loss, and with KD + each manifold term alone, over several seeds, from the default teacher
(trained once, reused from the artifact cache and pinned across seeds); plus a teacher with another
patch grid and a CNN teacher (one seed). Every run goes through the pipeline's cache, so a rerun
reuses finished variants. Writes JSON and prints a table.

    .venv/bin/python bench/distill_quality.py [CONFIG] [--quick] [--threads 1] [--out PATH]
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.config import load_config  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.fileio import write_json  # noqa: E402
from pipeline.graph import Pipeline  # noqa: E402
from pipeline.progress import Progress  # noqa: E402
from stages.batches import load_dataset  # noqa: E402
from stages.models import load_model  # noqa: E402
from stages.training import accuracy  # noqa: E402

# Reduced setting: the students train on a subset for fewer epochs than pipeline.toml, so that
# 8 variants x 3 seeds + 2 extra teachers and their students fit in an hour on 2 CPU cores.
SETTINGS = {
    "full": {"subset": 10_000, "test_subset": 0, "epochs": 6, "seeds": [0, 1, 2]},
    "quick": {"subset": 2_000, "test_subset": 2_000, "epochs": 1, "seeds": [0]},
}
ALL_BLOCKS = "[0, 1, 2, 3]"
# name -> (teacher, distill overrides); teacher "default" is pipeline.toml's, pinned from the cache
VARIANTS = {
    "none": ("default", ["distill.kd='none'", "distill.manifold=false"]),
    "kd": ("default", ["distill.manifold=false"]),
    "kd+manifold": ("default", []),
    "kd+intra": ("default", ["distill.w_inter=0.0", "distill.w_random=0.0"]),
    "kd+inter": ("default", ["distill.w_intra=0.0", "distill.w_random=0.0"]),
    "kd+random": ("default", ["distill.w_intra=0.0", "distill.w_inter=0.0"]),
    # the paper's objective: alpha = 1 (no label term), every block matched (its map covers 8 of 12 blocks)
    "kd (alpha 1)": ("default", ["distill.manifold=false", "distill.alpha=1.0"]),
    "kd+manifold (paper)": ("default", ["distill.alpha=1.0", f"distill.student_layers={ALL_BLOCKS}",
                                        f"distill.teacher_layers={ALL_BLOCKS}"]),
    "patch2 teacher: kd": ("patch2", ["distill.manifold=false"]),
    "patch2 teacher: kd+manifold": ("patch2", []),
    "cnn teacher: kd": ("cnn", ["distill.manifold=false"]),
    "cnn teacher: kd+manifold": ("cnn", []),
}
# Extra teachers, trained here on the bench's subset for the bench's epochs (pipeline.toml's recipe otherwise).
# patch 2 gives a 14x14 token grid against the student's 7x7; repvgg_a0 is a timm CNN that accepts img_size.
TEACHERS = {
    "patch2": ["teacher.model='convstem_vit_small'", "teacher.overrides.patch_size=2"],
    "cnn": ["teacher.model='repvgg_a0'"],
}


def default_teacher(config: str, threads: int, progress: Progress) -> tuple[list[str], list[str], dict]:
    """Run (or reuse) pipeline.toml up to its teacher. Returns overrides pinning that teacher, overrides fixing
    the input scaling to the one it was trained with, and its record."""
    records = {r.name: r for r in Pipeline(load_config(config, [f"run.threads={threads}"])).run(
        progress, until="teacher")}
    teacher, meta = records["teacher"], records["data"].summary
    pin = [f"teacher.checkpoint='{teacher.path / 'model.pt'}'", "teacher.epochs=0"]
    scaling = [f"data.mean={meta['mean']}", f"data.std={meta['std']}"]
    return pin, scaling, {"key": teacher.key, "path": str(teacher.path), "summary": teacher.summary}


def run_variant(config: str, overrides: list[str], progress: Progress) -> dict:
    """Train one student through the cache and measure its test top-1 (and its teacher's)."""
    records = {r.name: r for r in Pipeline(load_config(config, overrides)).run(progress, until="distill")}
    data, teacher, distill = records["data"], records["teacher"], records["distill"]
    return {"top1": test_top1(distill.path, data.path), "teacher_top1": test_top1(teacher.path, data.path),
            "val_top1": distill.summary["val_top1"], "wall_s": round(distill.wall_s, 1),
            "train_s": distill.summary["train_seconds"], "teacher_wall_s": round(teacher.wall_s, 1),
            "cached": distill.cached}


@functools.cache
def test_top1(model_dir: Path, data_dir: Path) -> float:
    """Top-1 (%) of an artifact's model.pt on the data artifact's test split."""
    return round(accuracy(load_model(model_dir / "model.pt")[0], load_dataset(data_dir).test, "cpu")[1], 3)


def summarise(runs: list[dict]) -> dict:
    top1 = [r["top1"] for r in runs]
    return {"mean": round(statistics.mean(top1), 3), "std": round(statistics.stdev(top1), 3) if len(top1) > 1 else None,
            "mean_wall_s": round(statistics.mean(r["wall_s"] for r in runs), 1)}


def host() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def print_table(result: dict) -> None:
    s = result["setting"]
    table = Table(title=f"student test top-1, {s['subset']} training images (val included), {s['epochs']} epochs")
    for col in ("variant", "teacher", "teacher %", "seeds", "top-1 %", "std", "per seed", "s / run"):
        table.add_column(col, justify="left" if col in ("variant", "teacher") else "right")
    refused = []
    for name, v in result["variants"].items():
        if "error" in v:
            table.add_row(name, v["teacher"], "", "", "refused")
            refused.append(f"{name}: {v['error']}")
            continue
        std = "-" if v["std"] is None else f"{v['std']:.2f}"
        table.add_row(name, v["teacher"], f"{v['runs'][0]['teacher_top1']:.2f}", str(len(v["runs"])),
                      f"{v['mean']:.2f}", std, " ".join(f"{r['top1']:.2f}" for r in v["runs"]),
                      f"{v['mean_wall_s']:.0f}")
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for line in refused:
        console.print(f"refused: {line}")


def run_all(config: str, s: dict, out: Path, progress: Progress) -> dict:
    """Every variant in turn; the JSON is rewritten after each, so an interrupted run leaves the finished ones."""
    start = time.perf_counter()
    pin, scaling, teacher = default_teacher(config, s["threads"], progress)
    common = ["run.name=bench-distill", f"run.threads={s['threads']}", f"data.subset={s['subset']}",
              f"data.test_subset={s['test_subset']}", f"distill.epochs={s['epochs']}"] + scaling
    teachers = {"default": pin, **{k: v + [f"teacher.epochs={s['epochs']}"] for k, v in TEACHERS.items()}}
    result = {"setting": s, "config": config, "common_overrides": common, "teachers": teachers,
              "default_teacher": teacher, "host": host(), "variants": {}, "complete": False}
    for name, (which, extra) in VARIANTS.items():
        seeds = s["seeds"] if which == "default" else s["seeds"][:1]
        entry = {"teacher": which, "overrides": extra}
        try:
            runs = [{"seed": seed, **run_variant(config, common + teachers[which] + extra + [f"run.seed={seed}"],
                                                 progress)} for seed in seeds]
            entry.update(runs=runs, **summarise(runs))
        except UserError as exc:  # a case the distill stage refuses: recorded, not hidden
            entry["error"] = str(exc)
        result["variants"][name] = entry
        progress.log(f"{name}: {entry.get('mean', entry.get('error'))}")
        result["wall_s"] = round(time.perf_counter() - start, 1)
        write_json(out, result)
    result["complete"] = True
    write_json(out, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="pipeline.toml")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny subset, 1 epoch, 1 seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared 2-core host)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    out = Path(args.out or f"bench/results/distill_quality{'_quick' if args.quick else ''}.json")
    with Progress() as progress:
        result = run_all(args.config, {"mode": mode, **SETTINGS[mode], "threads": args.threads}, out, progress)
    print_table(result)
    print(f"total {result['wall_s']:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
