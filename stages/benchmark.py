"""Benchmark stage: every exported and quantized student on every configured target profile.

A target's artifacts, of all its runtimes, are measured by one benchmark agent call, timed interleaved, on
the device with the profile's threads (ssh/adb: measured), on this host with the profile's threads capped at
its usable cores (local, or an unreachable device: proxy), or marked needs-device (Core ML off macOS). INT8
rows get a noise-aware verdict and a diagnosis against their float sibling. A target naming a public device
also gets predicted rows (targets/predict/), kept apart from the timed ones; a `predicted` target is not
timed at all.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

from pipeline.core.fileio import read_json, write_json
from pipeline.core.numerics import Numerics
from pipeline.core.stage import Stage, StageContext
from targets.agent.bundle import shipped_modules
from targets.agent.host import int8_instructions
from targets.latency import LatencyConfig, Model, add_diagnoses, measure_target
from targets.predict.rows import predicted_rows
from targets.profiles import resolve

log = logging.getLogger(__name__)

LATENCY_FILE = "latency.json"


class BenchmarkConfig(LatencyConfig):
    """Every exported and quantized artifact on every target in `targets`; the timing fields come first."""


    enabled: bool = Field(True, description="benchmark every artifact on every target")
    targets: list[str] = Field(default_factory=lambda: ["android-phone", "wearos-watch", "iphone", "apple-watch",
                                                        "x86-laptop", "galaxy-s24-npu-tflite",
                                                        "snapdragon-x-elite-npu"],
                               description="target profiles: built-in names (`manifold-edge targets`) or "
                                           "[targets.NAME] tables")



def stage_models(inputs: dict[str, Path]) -> list[Model]:
    models = []
    for stage in ("export", "quantize"):
        for key, a in read_json(inputs[stage] / f"{stage}.json")["artifacts"].items():
            models.append(Model(key, inputs[stage] / a["file"], a["runtime"], a["precision"], Numerics.of(a)))
    return models


def model_family(architecture: str) -> str | None:
    """The public family of the exported model (the project's own models registered with timm first)."""
    import stages.models  # noqa: F401
    from targets.predict.zoo import family_of

    return family_of(architecture)


class BenchmarkStage(Stage):
    name = "benchmark"
    sections = ("benchmark", "targets")
    inputs = ("export", "quantize")
    uses_seed = False
    scripts = shipped_modules()  # the agent's zipapp, copied to the device and run there (adapters found by name)
    data = ("targets/predict/predictor.json", "targets/predict/features.csv", "targets/predict/measurements.csv",
            "targets/predict/numerics.csv")

    def run(self, ctx: StageContext) -> dict:
        cfg: BenchmarkConfig = ctx.config["benchmark"]
        if not cfg.enabled:
            return {"targets": {}, "rows": []}
        profiles = resolve(cfg.targets, ctx.config["targets"])
        models = stage_models(ctx.inputs)
        # one agent call per target: the artifacts of all its runtimes timed interleaved
        work = [(name, p, [m for runtime in p.all_runtimes for m in models if m.runtime == runtime])
                for name, p in profiles.items() if p.connection != "predicted"]
        rows = []
        with ctx.progress.bar("  benchmarking", sum(len(fitting) for *_, fitting in work), unit="measurement") as bar:
            for name, profile, fitting in work:
                if not fitting:
                    continue
                bar.advance(0, info=f"{name}: {', '.join(m.key for m in fitting)} (interleaved)")
                for row in measure_target(fitting, name, profile, cfg):
                    rows.append(row)
                    bar.advance(info=f"{name}: {row['artifact']}")
                    within = "latency_ms" in row and row["budget"]["latency_ok"]
                    log.log(logging.INFO if within else logging.WARNING, timed_row_text(row))
        add_diagnoses(rows)
        family = model_family(read_json(ctx.inputs["export"] / "export.json")["model"])  # its held-out error
        predicted = [row for name, p in profiles.items() if p.public_device
                     for row in predicted_rows(models, name, p, family)]
        for row in predicted:
            log.info(predicted_row_text(row))
        targets = {name: p.model_dump(mode="json") for name, p in profiles.items()}
        unmatched = [n for n, p in profiles.items() if not any(m.runtime in p.all_runtimes for m in models)]
        result = {"targets": targets, "rows": rows, "predicted": predicted, "host": int8_instructions(),
                  "no_artifact": {n: profiles[n].runtime for n in unmatched}}
        write_json(ctx.out / LATENCY_FILE, result)
        return result


def timed_row_text(row: dict) -> str:
    head = f"{row['target']} / {row['artifact']}"
    label = f"{row['label']}: {row['kernels']}" if row.get("kernels") else row["label"]
    if "latency_ms" not in row:
        return f"{head}: {row['label']} ({row['error']})"
    lat = row["latency_ms"]
    ok = "within" if row["budget"]["latency_ok"] else "over"
    threads = f"{row['threads']} thread(s)"
    if row["threads"] < row.get("threads_asked", row["threads"]):
        threads += f", capped from {row['threads_asked']} at this host's cores"
    return (f"{head} ({label}, {threads}): p50 {lat['p50']:.3f} ms {interval(lat)}, "
            f"p90 {lat['p90']:.3f} ms ({ok} {row['budget']['latency_ms']} ms), {row['runs']} runs, "
            f"model RSS {row['model_rss_mb']:.0f} MB")


def predicted_row_text(row: dict) -> str:
    """A predicted row in one line: the NPU latency and its interval, p90 as the interval's upper end, the
    held-out error of its basis with the sibling-device error, and what the public table covers."""
    head = f"{row['target']} / {row['artifact']}"
    jobs = row["public_coverage"]["jobs_by_compute_unit"]
    table = (f"public table for {row['public_device']} {row['public_runtime']}: {jobs['NPU']} NPU, {jobs['GPU']} GPU, "
             f"{jobs['CPU']} CPU jobs: no phone CPU latency can be predicted from it")
    if "predicted" not in row:
        return f"{head}: predicted: {row['error']} ({table})"
    p, lat, e = row["predicted"], row["latency_ms"], row["predicted"]["held_out_error"]
    lo, hi = lat["p50_interval"]
    basis = f"{e['family']} family, one model held out" if e["basis"] == "own family held out" else "new family"
    sibling = (f"; fitted from its sibling {e['sibling_device']}: {e['sibling_device_median_ape']:.0%}"
               if e["sibling_device"] else "")
    widened = f" [interval widened: {'; '.join(p['widened'])}]" if p["widened"] else ""
    return (f"{head}: predicted NPU p50 {p['p50_ms']:.3f} ms ({p['level']:.0%} interval {lo:.3f}-{hi:.3f}; p90 "
            f"stated as its upper end {lat['p90']:.3f} ms) on {p['device']} {p['runtime']} {p['precision']} "
            f"({row['precision']}), from {p['models']} public models; held-out error ({basis}, {e['models']} "
            f"models): median {e['median_ape']:.0%}, p90 {e['p90_ape']:.0%}{sibling}; {table}{widened}")


def interval(lat: dict) -> str:
    ci = lat.get("p50_interval")
    return f"(95% interval {ci[0]:.3f}-{ci[1]:.3f})" if ci else "(no interval: too few runs)"
