"""Accuracy before and after INT8 for the default pipeline, with the wall time of each export and
quantize step. Runs (or reuses from the cache) pipeline.toml, writes JSON and prints a table.

    .venv/bin/python bench/quantization.py [CONFIG] [--out bench/results/quantization.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.config import load_config  # noqa: E402
from pipeline.core.fileio import write_json  # noqa: E402
from pipeline.core.progress import Progress  # noqa: E402
from pipeline.graph import Pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="pipeline.toml")
    parser.add_argument("--out", default="bench/results/quantization.json")
    args = parser.parse_args()
    cfg = load_config(args.config)
    with Progress() as progress:
        records = {r.name: r for r in Pipeline(cfg).run(progress)}
    steps = {**records["export"].summary["artifacts"], **records["quantize"].summary["artifacts"]}
    rows = []
    for row in records["evaluate"].summary["artifacts"]:
        rows.append({**{k: row[k] for k in ("artifact", "runtime", "precision", "top1", "delta_top1", "agreement",
                                            "bytes")},
                     "make_seconds": steps.get(row["artifact"], {}).get("seconds")})
    result = {"config": args.config, "config_hash": cfg.digest(), "test_images": records["evaluate"].summary["images"],
              "rows": rows}
    write_json(Path(args.out), result)
    table = Table(title=f"student artifacts on {result['test_images']} test images")
    for col in ("artifact", "runtime", "precision", "top-1 %", "Δ vs torch", "agreement", "MB", "made in s"):
        table.add_column(col, justify="right")
    for r in rows:
        made = "-" if r["make_seconds"] is None else f"{r['make_seconds']:.1f}"
        table.add_row(r["artifact"], r["runtime"], r["precision"], f"{r['top1']:.2f}", f"{r['delta_top1']:+.2f}",
                      f"{100 * r['agreement']:.2f}%", f"{r['bytes'] / 1e6:.2f}", made)
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
