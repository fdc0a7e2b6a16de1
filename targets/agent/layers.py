"""Per-layer profiles, one shape for every runtime: times by layer and by (op type, precision), each with its
share of the layers' sum, and the share of each precision (int8 | convert | float, as each adapter classifies
its runtime's kernels). The profile is taken from a second, profiled instance of the model: profiling slows a
run, so the latency is timed without it."""
from __future__ import annotations

import argparse
import tempfile

from targets.agent.adapter import Adapter, load

PROFILE_RUNS = 50  # profiled runs per model
PROFILE_WARMUP = 5  # runs of the profiled instance before them


def summarise(nodes: list[dict], runs: int, total_ms: float | None) -> dict:
    """Per-run times by layer and by op type, each with its share of the layers' sum. nodes: {name, op_type,
    precision, us (summed over `runs`), kernel (optional)}; total_ms: the runtime's own time of one run."""
    layer_ms = sum(n["us"] for n in nodes) / runs / 1000
    for n in nodes:
        n["ms"] = n.pop("us") / runs / 1000
        n["share"] = n["ms"] / layer_ms if layer_ms else 0.0
    by_op: dict[tuple[str, str], dict] = {}
    for n in nodes:
        entry = by_op.setdefault((n["op_type"], n["precision"]),
                                 {"op_type": n["op_type"], "precision": n["precision"], "ms": 0.0, "count": 0,
                                  "kernels": {}})
        entry["ms"] += n["ms"]
        entry["count"] += 1
        kernel = n.get("kernel") or n["op_type"]
        entry["kernels"][kernel] = entry["kernels"].get(kernel, 0.0) + n["ms"]
    for entry in by_op.values():
        entry["share"] = entry["ms"] / layer_ms if layer_ms else 0.0
        entry["kernel"] = max(entry.pop("kernels").items(), key=lambda item: item[1])[0]  # the one taking most time
    precision: dict[str, float] = {}
    for n in nodes:
        precision[n["precision"]] = precision.get(n["precision"], 0.0) + n["share"]
    return {"layers_ms": layer_ms, "run_ms": total_ms, "runs": runs,
            "share_by_precision": precision,
            "by_op_type": sorted(by_op.values(), key=lambda e: -e["ms"]),
            "layers": sorted(nodes, key=lambda n: -n["ms"])}


def median_run(runner: Adapter, x, layers) -> dict:
    """For a runtime that keeps only the last run's counters: PROFILE_WARMUP runs, then PROFILE_RUNS runs, each
    read with layers(); the run whose layers' sum is the median (not an outlier)."""
    for _ in range(PROFILE_WARMUP):
        runner(x)
    profiles = []
    for _ in range(PROFILE_RUNS):
        runner(x)
        profiles.append(layers())
    profiles.sort(key=lambda p: p["layers_ms"])
    return profiles[len(profiles) // 2]


def profile_layers(args: argparse.Namespace, x) -> dict:
    """The per-layer profile of args.model on x, from a profiled instance of its own."""
    with tempfile.TemporaryDirectory() as folder:
        return load(args, folder).profile(x)
