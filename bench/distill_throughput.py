"""Distillation throughput: images/s of the distill stage, soft KD only vs KD + manifold, in 1 and 2
processes (torchrun, DDP) on this CPU, and on CUDA when there is a GPU. Runs the real pipeline
(`manifold-edge run --until distill`) with one pinned teacher; reads images/s and GPU memory from the
stage's metrics.jsonl (the last epoch, so start-up is not counted). Writes JSON, prints a table.

    .venv/bin/python bench/distill_throughput.py [--quick] [--device cpu|cuda] [--nproc 1 2]
                                                 [--out bench/results/distill_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.core.fileio import write_json  # noqa: E402
from targets.agent.host import cpu_name as agent_cpu_name  # noqa: E402

VARIANTS = {"kd": ["distill.manifold=false"], "kd+manifold": ["distill.manifold=true"]}


def run_pipeline(out: Path, overrides: list[str], nproc: int, until: str) -> tuple[float, str]:
    args = [sys.executable, "-m", "pipeline", "run", "--config", str(out / "pipeline.toml"), "--until", until,
            "--nproc", str(nproc)]
    for item in [f"run.output_dir='{out / 'runs'}'", "benchmark.enabled=false", *overrides]:
        args += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"run failed ({' '.join(overrides)}, nproc {nproc}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stderr


def last_epoch(out: Path, stage: str) -> dict:
    folders = [p for p in (out / "runs" / ".cache").glob(f"{stage}-*") if p.suffix != ".partial"]
    newest = max(folders, key=lambda p: p.stat().st_mtime)
    return json.loads((newest / "metrics.jsonl").read_text().splitlines()[-1])


def cpu_name() -> str:
    return f"{agent_cpu_name()} ({os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 3,000-image subset (about a minute on 2 cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="more overrides for every run, e.g. distill.batch_size=512 or run.compile=true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill_throughput.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU")
    subset = 3000 if args.quick else 12000
    base = [f"data.subset={subset}", f"run.device='{args.device}'", "distill.epochs=2", *args.extra]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "pipeline.toml").write_text("")
        run_pipeline(out, [*base, "teacher.epochs=1"], 1, "teacher")  # one teacher for every variant
        teacher = next(p for p in (out / "runs" / ".cache").glob("teacher-*") if p.suffix != ".partial")
        pinned = [f"teacher.checkpoint='{teacher / 'model.pt'}'", "teacher.epochs=0"]
        for nproc in args.nproc:
            threads = max(1, (os.cpu_count() or 1) // nproc) if args.device == "cpu" else 0
            for variant, overrides in VARIANTS.items():
                wall, _ = run_pipeline(out, [*base, *pinned, *overrides, f"run.threads={threads}"], nproc, "distill")
                epoch = last_epoch(out, "distill")
                rows.append({"variant": variant, "processes": nproc, "device": args.device, "threads": threads,
                             "images_per_s": epoch["images_per_s"], "epoch_s": epoch["seconds"],
                             "gpu_memory_gb": epoch.get("gpu_memory_gb"), "run_wall_s": round(wall, 1)})
                Console().print(f"{variant}, {nproc} process(es): {epoch['images_per_s']:.0f} img/s")
    for row in rows:
        single = next(r for r in rows if r["variant"] == row["variant"] and r["processes"] == min(args.nproc))
        row["speedup_vs_fewest"] = round(row["images_per_s"] / single["images_per_s"], 2)
    for nproc in args.nproc:
        kd, both = (next(r for r in rows if r["processes"] == nproc and r["variant"] == v) for v in VARIANTS)
        both["manifold_cost"] = round(kd["images_per_s"] / both["images_per_s"], 2)
    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    result = {"setting": {"subset": subset, "epochs_measured": "last of 2", "overrides": base,
                          "device": device, "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "command": " ".join(["bench/distill_throughput.py", *sys.argv[1:]])},
              "rows": rows}
    write_json(Path(args.out), result)
    table = Table(title=f"distill throughput on {device} ({subset} images)")
    for column in ("variant", "processes", "img/s", "x fewest", "KD/manifold", "GPU GB"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["variant"], str(r["processes"]), f"{r['images_per_s']:.0f}", f"{r['speedup_vs_fewest']:.2f}",
                      str(r.get("manifold_cost", "")), str(r["gpu_memory_gb"] or ""))
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
