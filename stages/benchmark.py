"""Benchmark stage: every exported and quantized student on every configured target profile.

A target's artifacts are measured by one benchmark agent call, timed interleaved, on the device
(ssh/adb: measured), on this host with the profile's threads (local, or an unreachable device: proxy),
or marked needs-device (Core ML off macOS). INT8 rows get a noise-aware verdict and a diagnosis against
their float sibling.
"""
from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from pipeline.config import BenchmarkConfig
from pipeline.fileio import read_json, write_json
from pipeline.stage import Stage, StageContext
from targets.benchmark import Model, add_diagnoses, measure_target
from targets.diagnosis import int8_instructions
from targets.profiles import resolve

LATENCY_FILE = "latency.json"


def stage_models(inputs: dict[str, Path]) -> list[Model]:
    models = []
    for stage in ("export", "quantize"):
        for key, a in read_json(inputs[stage] / f"{stage}.json")["artifacts"].items():
            models.append(Model(key, inputs[stage] / a["file"], a["runtime"], a["precision"]))
    return models


class BenchmarkStage(Stage):
    name = "benchmark"
    sections = ("benchmark", "targets")
    inputs = ("export", "quantize")
    uses_seed = False
    scripts = ("targets.agent",)  # copied to the device and run there

    def run(self, ctx: StageContext) -> dict:
        cfg: BenchmarkConfig = ctx.config["benchmark"]
        if not cfg.enabled:
            return {"targets": {}, "rows": []}
        profiles = resolve(cfg.targets, ctx.config["targets"])
        models = stage_models(ctx.inputs)
        work = [(name, p, [m for m in models if m.runtime == runtime]) for name, p in profiles.items()
                for runtime in p.all_runtimes]  # one agent call per runtime: its artifacts timed interleaved
        rows = []
        with ctx.progress.bar("  benchmarking", sum(len(fitting) for *_, fitting in work)) as bar:
            for name, profile, fitting in work:
                if not fitting:
                    continue
                bar.advance(0, info=f"{name}: {', '.join(m.key for m in fitting)} (interleaved)")
                for row in measure_target(fitting, name, profile, cfg):
                    rows.append(row)
                    bar.advance(info=f"{name}: {row['artifact']}")
                    ctx.progress.log("  " + describe(row))
        add_diagnoses(rows)
        targets = {name: p.model_dump(mode="json") for name, p in profiles.items()}
        unmatched = [n for n, p in profiles.items() if not any(m.runtime in p.all_runtimes for m in models)]
        result = {"targets": targets, "rows": rows, "host": int8_instructions(),
                  "no_artifact": {n: profiles[n].runtime for n in unmatched}}
        write_json(ctx.out / LATENCY_FILE, result)
        return result


def describe(row: dict) -> str:
    head = f"{row['target']} / {row['artifact']}"
    label = f"{row['label']}: {row['kernels']}" if row.get("kernels") else row["label"]
    if "latency_ms" not in row:
        return escape(f"{head}: {row['label']} ({row['error']})")
    lat = row["latency_ms"]
    ok = "within" if row["budget"]["latency_ok"] else "[red]over[/]"
    return (f"{head} ({label}, {row['threads']} thread(s)): p50 {lat['p50']:.3f} ms {interval(lat)}, "
            f"p90 {lat['p90']:.3f} ms ({ok} {row['budget']['latency_ms']} ms), {row['runs']} runs, "
            f"model RSS {row['model_rss_mb']:.0f} MB")


def interval(lat: dict) -> str:
    ci = lat.get("p50_interval")
    return f"(95% interval {ci[0]:.3f}-{ci[1]:.3f})" if ci else "(no interval: too few runs)"
