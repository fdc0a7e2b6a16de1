"""Host latency of the default student, fp32 vs INT8, on ONNX Runtime, OpenVINO, ExecuTorch (XNNPACK) and
LiteRT (XNNPACK) at 1 and 2 threads,
against the floor set by its own GEMMs timed in ONNX Runtime's MatMul / MatMulInteger kernels
(targets/floor.py). Runs (or reuses from the
cache) pipeline.toml up to the quantize stage, writes JSON and prints a table.

    .venv/bin/python bench/latency.py [CONFIG] [--runs 2000] [--set KEY=VALUE ...] [--out bench/results/latency.json]

The numbers are this host's (a proxy for a device), measured with the same agent the pipeline uses: each
runtime's artifacts timed interleaved until every median's 95% interval is within 5% (or the caps), and
INT8 vs fp32 called faster / slower / equal within noise from those intervals.
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
from pipeline.core.numerics import Numerics  # noqa: E402
from pipeline.core.progress import Progress  # noqa: E402
from pipeline.graph import Pipeline  # noqa: E402
from stages.benchmark import BenchmarkConfig, stage_models  # noqa: E402
from stages.flops import flops_per_image  # noqa: E402
from stages.models import load_model  # noqa: E402
from targets.agent.host import int8_instructions  # noqa: E402
from targets.floor import floor  # noqa: E402
from targets.latency import add_diagnoses, measure_target  # noqa: E402
from targets.profiles import TargetProfile  # noqa: E402

THREADS = (1, 2)
RUNTIMES = ("onnxruntime", "openvino", "executorch", "litert")


def fastest(rows: list[dict]) -> list[dict]:
    """Per thread count and precision (fp32 / int8): the runtime with the lowest median, and every other
    runtime's best median as a multiple of it."""
    out = []
    for threads in THREADS:
        for kind in ("fp32", "int8"):
            best: dict[str, dict] = {}
            for r in rows:
                if "latency_ms" in r and r["threads"] == threads and Numerics.of(r).quantized == (kind == "int8"):
                    if r["runtime"] not in best or r["latency_ms"]["p50"] < best[r["runtime"]]["latency_ms"]["p50"]:
                        best[r["runtime"]] = r
            if not best:
                continue
            winner = min(best.values(), key=lambda r: r["latency_ms"]["p50"])
            out.append({"threads": threads, "precision": kind, "fastest": winner["runtime"],
                        "artifact": winner["artifact"], "p50_ms": winner["latency_ms"]["p50"],
                        "others_x": {rt: round(r["latency_ms"]["p50"] / winner["latency_ms"]["p50"], 2)
                                     for rt, r in best.items() if r is not winner}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="pipeline.toml")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides, as for `manifold-edge run --set`")
    parser.add_argument("--out", default="bench/results/latency.json")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    with Progress() as progress:
        records = {r.name: r for r in Pipeline(cfg).run(progress, until="quantize")}
    model, _ = load_model(records["distill"].path / "model.pt")
    shape = (cfg.data.channels, cfg.data.img_size, cfg.data.img_size)
    flops = flops_per_image(model, shape)
    onnx_fp32 = records["export"].path / "model.onnx"
    floors = {t: floor(onnx_fp32, t) for t in THREADS}  # fp32: MatMul, int8: MatMulInteger U8S8, CPU time and wall
    settings = BenchmarkConfig(runs=args.runs, max_seconds=20.0, warmup=50)
    models = [m for m in stage_models({"export": records["export"].path, "quantize": records["quantize"].path})
              if m.runtime in RUNTIMES]
    rows = []
    for threads in THREADS:
        for runtime in sorted({m.runtime for m in models}, key=RUNTIMES.index):
            profile = TargetProfile(runtime=runtime, threads=threads, latency_budget_ms=1e9, memory_budget_mb=1e9)
            rows += measure_target([m for m in models if m.runtime == runtime], f"host-{threads}t", profile, settings)
    for row in rows:
        if "latency_ms" in row:
            kind = "int8" if Numerics.of(row).quantized else "fp32"
            threads = row["threads"]
            row["floor_ms"] = floors[threads][kind]["floor_ms"]
            row["floor_cpu_ms"] = floors[threads][kind]["floor_cpu_ms"]
            row["over_floor"] = row["latency_ms"]["p50"] / row["floor_ms"]
    add_diagnoses(rows)
    for row in rows:
        row.pop("profile", None)
    result = {"config": args.config, "overrides": args.overrides, "flops_per_image": flops, "floor": floors,
              "host": {**rows[0]["host"], **int8_instructions()}, "runs": args.runs, "rows": rows,
              "fastest": fastest(rows)}
    write_json(Path(args.out), result)
    table = Table(title=f"batch-1 host latency (proxy), {flops / 1e6:.1f} MFLOPs/image")
    for col in ("threads", "artifact", "runtime", "p50 ms (95% interval)", "CPU p50 ms", "p90 ms", "floor ms",
                "x floor", "vs fp32"):
        table.add_column(col, justify="right")
    for r in (r for r in rows if "latency_ms" in r):
        lat, c = r["latency_ms"], r.get("comparison")
        low, high = lat.get("p50_interval") or (float("nan"), float("nan"))
        speed = f"{c['verdict']}: {c['speedup']:.2f}x" + (f" ({c['interval'][0]:.2f}-{c['interval'][1]:.2f})"
                                                          if c["interval"] else "") if c else "-"
        table.add_row(str(r["threads"]), r["artifact"], r["runtime"], f"{lat['p50']:.3f} ({low:.3f}-{high:.3f})",
                      f"{r['cpu_ms']['p50']:.3f}" if "cpu_ms" in r else "-", f"{lat['p90']:.3f}",
                      f"{r['floor_ms']:.4f}", f"{r['over_floor']:.1f}", speed)
    Console(width=130).print(table)
    for t in THREADS:
        print(f"{t} thread(s): GEMM floor fp32 {floors[t]['fp32']['floor_cpu_ms']:.4f} ms, "
              f"int8 {floors[t]['int8']['floor_cpu_ms']:.4f} ms CPU time ({floors[t]['gemm_flops'] / 1e6:.2f} MFLOPs "
              f"in {len(floors[t]['gemms'])} GEMMs)")
    for f in result["fastest"]:
        others = ", ".join(f"{rt} {x:.2f}x" for rt, x in f["others_x"].items())
        print(f"{f['threads']} thread(s), {f['precision']}: fastest {f['fastest']} ({f['artifact']}, p50 "
              f"{f['p50_ms']:.3f} ms); {others}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
