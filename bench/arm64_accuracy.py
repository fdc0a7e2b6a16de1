"""The default run's phone and watch files (ONNX Runtime, LiteRT, ExecuTorch) in their aarch64 builds on emulated
arm64 cores, against torch and their x86 builds, over the whole test split. Runs (or reuses from the cache)
pipeline.toml up to quantize; needs the root of `make arm64`. Writes JSON and prints a table.

    .venv/bin/python bench/arm64_accuracy.py [CONFIG] [--images N] [--cores CORE...]
                                            [--out bench/results/arm64_accuracy.json]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.config import load_config  # noqa: E402
from pipeline.core.fileio import write_json  # noqa: E402
from pipeline.core.progress import Progress  # noqa: E402
from pipeline.graph import Pipeline  # noqa: E402
from stages.batches import load_dataset  # noqa: E402
from stages.evaluate import torch_logits  # noqa: E402
from targets.agent.host import cpu_name  # noqa: E402
from targets.arm64 import stage_accuracy  # noqa: E402
from targets.profiles import TargetProfile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="pipeline.toml")
    parser.add_argument("--images", type=int, default=2000, help="test images (a fixed random subset)")
    parser.add_argument("--cores", nargs="+", default=["cortex-a76", "cortex-a53", "max,sme=off"])
    parser.add_argument("--out", default="bench/results/arm64_accuracy.json")
    args = parser.parse_args()
    cfg = load_config(args.config)
    with Progress() as progress:
        records = {r.name: r for r in Pipeline(cfg).run(progress, until="quantize")}
    inputs = {name: r.path for name, r in records.items()}
    data = load_dataset(inputs["data"])
    profiles = {core: TargetProfile(runtime="onnxruntime", runtimes=["executorch", "litert"], threads=2,
                                    connection="arm64-emulated", cpu=core, timeout_s=3600) for core in args.cores}
    rows, wall, result = [], {}, {}
    for core, profile in profiles.items():
        start = time.monotonic()
        result = stage_accuracy(inputs, data.test, [core], {core: profile}, args.images,
                                torch_logits(inputs["distill"] / "model.pt"))
        wall[core] = round(time.monotonic() - start, 1)
        rows += result["rows"]
    host = {"cpu": cpu_name(), "machine": platform.machine()}
    out = {"config": args.config, "config_hash": cfg.digest(), "host": host,
           "qemu": result["qemu"], "packages": result["packages"], "images": result["images"],
           "subset": result["subset"], "rows": rows,
           "evaluation_wall_s": wall,  # what the check cost on this host (x86 runs included): not a latency
           "command": "make arm64 && .venv/bin/python bench/arm64_accuracy.py"}
    write_json(Path(args.out), out)
    table = Table(title=f"arm64 (emulated) vs x86 on {out['images']} test images")
    for col in ("core", "artifact", "runtime", "precision", "torch %", "x86 %", "arm64 %", "agree torch %",
                "argmax != x86", "max |diff| vs x86"):
        table.add_column(col, justify="right")
    for r in rows:
        if "error" in r:
            table.add_row(r["target"], r["artifact"], r["runtime"], r["precision"], "not measured", "", "", "", "", "")
            continue
        table.add_row(r["target"], r["artifact"], r["runtime"], r["precision"], f"{r['torch_top1']:.2f}",
                      f"{r['x86_top1']:.2f}", f"{r['arm64_top1']:.2f}", f"{r['agreement']:.2f}",
                      str(r["vs_x86"]["argmax_differ"]), f"{r['vs_x86']['max_abs_diff']:.2g}")
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
