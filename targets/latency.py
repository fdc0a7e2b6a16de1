"""Latency of model files on target profiles: pick the device runner, fall back to a labelled host proxy
when a device cannot be reached, time a target's artifacts interleaved in one agent call, and pair every
INT8 result with its float sibling: a noise-aware verdict (faster / slower / equal within noise) and the
diagnosis."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from pipeline.core.numerics import Numerics
from pipeline.core.section import Section
from targets.agent.adapter import profiled
from targets.agent.host import int8_instructions, usable_cores
from targets.devices import DeviceError, make_device
from targets.diagnosis import diagnose
from targets.profiles import TargetProfile

TOP_LAYERS = 10  # layers kept per result (every op type is kept)
FASTER, SLOWER, EQUAL, UNKNOWN = "faster", "slower", "equal within noise", "unknown"
XNNPACK_RUNTIMES = ("executorch", "litert")  # on a phone's CPU and on this host, both run XNNPACK's kernels
RETRY_ALONE = {"bad_model", "agent_failed"}  # a call failing so, naming no model: time each model on its own
RUNTIME_WIDE = {"runtime_missing", "needs_macos", "tool_missing"}  # a failure that fails every model of the runtime


class LatencyConfig(Section):
    """How a target's artifacts are timed (the [benchmark] fields this module reads)."""

    runs: int = Field(200, ge=3, le=1_000_000, description="at most this many timed batch-1 runs per artifact "
                                                            "and target (a target's artifacts are timed interleaved)")
    max_seconds: float = Field(5.0, gt=0, description="timing budget per artifact: a target's artifacts, timed "
                                                      "together, stop after max_seconds x their count (at least "
                                                      "one round)")
    warmup: int = Field(10, ge=0, description="untimed runs of each artifact first")
    block_runs: int = Field(20, ge=1, le=10_000, description="runs of one artifact per round-robin turn (the first "
                                                             "run of a turn, after another artifact's, is the slow "
                                                             "one: fewer turns, fewer of them)")
    min_runs: int = Field(20, ge=6, le=1_000_000, description="runs per artifact before the stopping rule is "
                                                              "checked (6 is the fewest with a 95% interval)")
    rel_interval: float = Field(0.05, gt=0, lt=1, description="stop once the 95% interval of every artifact's "
                                                              "median is within this fraction of the median "
                                                              "(else at runs or max_seconds)")
    throughput_batch: int = Field(8, ge=1, le=4096, description="batch size for the throughput figure")
    profile_layers: bool = Field(True, description="per-layer profile (ONNX Runtime, OpenVINO, ExecuTorch)")
    proxy_when_unreachable: bool = Field(True, description="when an ssh/adb device cannot be reached, measure "
                                                           "on this host with the profile's threads (proxy)")


@dataclass
class Model:
    key: str        # artifact name, e.g. onnx_int8_static
    path: Path
    runtime: str    # onnxruntime | openvino | coreml | executorch | litert
    precision: str  # the readable label the export/quantize stage wrote, e.g. "int8 static QDQ"
    numerics: Numerics  # what the rules read


def agent_args(runtime: str, profile: TargetProfile, settings: LatencyConfig, threads: int | None = None) -> list[str]:
    """The agent's arguments for models of `runtime` (one, or one per model, comma-separated) on this target, at
    `threads` (default: the profile's)."""
    runtimes = runtime.split(",")
    args = ["--runtime", runtime, "--threads", str(threads or profile.threads), "--runs", str(settings.runs),
            "--max-seconds", str(settings.max_seconds), "--warmup", str(settings.warmup),
            "--block", str(settings.block_runs), "--min-runs", str(settings.min_runs),
            "--rel-interval", str(settings.rel_interval),
            "--throughput-batch", str(settings.throughput_batch), "--compute-units", profile.compute_units]
    if profile.input_size:
        args += ["--input-size", str(profile.input_size)]
    if "onnxruntime" in runtimes:
        args += ["--execution-provider", profile.execution_provider or "CPUExecutionProvider",
                 "--graph-optimization-level", profile.graph_optimization_level or "all"]
    if "openvino" in runtimes:
        args += ["--openvino-precision", profile.ov_precision_hint or "f32"]
    if settings.profile_layers and set(runtimes) & set(profiled()):  # the agent profiles those runtimes' models
        args.append("--profile")
    return args


def runtime_arg(models: list[Model]) -> str:
    """--runtime for a call: the one runtime of all models, or one per model."""
    runtimes = [m.runtime for m in models]
    return runtimes[0] if len(set(runtimes)) == 1 else ",".join(runtimes)


def groups(models: list[Model]) -> list[list[Model]]:
    """Models split into as few groups as possible with distinct file names (one agent call each: a remote
    device copies a call's files into one folder)."""
    out: list[list[Model]] = []
    for m in models:
        group = next((g for g in out if all(o.path.name != m.path.name for o in g)), None)
        if group is None:
            out.append([m])
        else:
            group.append(m)
    return out


def measure_target(models: list[Model], name: str, profile: TargetProfile, settings: LatencyConfig) -> list[dict]:
    """A target's artifacts, of every runtime, timed interleaved in one agent call per group of distinct file
    names: one row each, labelled measured / proxy / needs-device, or an error. On this host (proxy) the
    threads are the profile's, capped at the host's usable cores; on a device, the profile's. Core ML off
    macOS gets a call of its own (the agent says it needs macOS)."""
    if not models:
        return []
    rows = {m.key: {"target": name, "artifact": m.key, "runtime": m.runtime, "precision": m.precision,
                    "numerics": m.numerics.as_dict(), "device": profile.device, "threads": profile.threads,
                    "threads_asked": profile.threads} for m in models}
    done: dict[str, dict] = {}
    device = make_device(profile, name)
    try:
        device.check()
    except DeviceError as exc:
        for m in models:  # Core ML is never timed on a proxy
            if not settings.proxy_when_unreachable or m.runtime == "coreml":
                done[m.key] = {**rows[m.key], "label": "needs-device", "error": str(exc), "error_kind": exc.kind}
            else:
                rows[m.key]["note"] = f"{exc}; measured on this host instead"
        device = make_device(profile.model_copy(update={"connection": "local"}), name)
    threads = profile.threads
    if device.connection == "local":
        threads = min(threads, usable_cores())
        for row in rows.values():
            row["threads"] = threads
    timed = [m for m in models if m.key not in done]
    apart = [m for m in timed if m.runtime == "coreml" and device.connection == "local" and sys.platform != "darwin"]
    for group in [*groups([m for m in timed if m not in apart]), *groups(apart)]:
        for model, result in zip(group, run_group(device, group, profile, settings, threads)):
            done[model.key] = finish(rows[model.key], result, device, name, profile)
    return [done[m.key] for m in models]


def run_group(device, group: list[Model], profile: TargetProfile, settings: LatencyConfig,
              threads: int) -> list[dict | DeviceError]:
    """The agent's result per model of one call, or the DeviceError of each. When a call of several models
    fails on one of them, the others still get timed: the model the error names gets it (with every model of
    its runtime when the runtime itself is missing: RUNTIME_WIDE) and the rest are timed again in one call; a
    failure that names no model (RETRY_ALONE: the agent died) retries each model in a call of its own."""
    args = agent_args(runtime_arg(group), profile, settings, threads)
    try:
        out = device.run_agent([m.path for m in group], args, profile.timeout_s * len(group))
    except DeviceError as exc:
        failed = [m for m in group if m.path.name == exc.model]
        if failed and exc.kind in RUNTIME_WIDE:
            failed = [m for m in group if m.runtime == failed[0].runtime]
        rest = [m for m in group if m not in failed]
        if failed and rest:
            results = dict(zip((m.key for m in rest), run_group(device, rest, profile, settings, threads)))
            return [exc if m in failed else results[m.key] for m in group]
        if not failed and len(group) > 1 and exc.kind in RETRY_ALONE:
            return [r for m in group for r in run_group(device, [m], profile, settings, threads)]
        return [exc] * len(group)
    return out["results"] if "results" in out else [out]


def finish(row: dict, result: dict | DeviceError, device, name: str, profile: TargetProfile) -> dict:
    if isinstance(result, DeviceError):
        label = "needs-device" if result.kind == "needs_macos" else "error"
        return {**row, "label": label, "error": str(result), "error_kind": result.kind}
    result = {k: v for k, v in result.items() if k not in ("schedule", "samples")}
    notes = [row["note"]] if "note" in row else []
    if row["threads"] < row["threads_asked"]:
        notes.append(f"target '{name}' timed at {row['threads']} thread(s): this host has {row['threads']} usable "
                     f"cores; the profile asks for {row['threads_asked']}")
    if notes:
        row["note"] = "; ".join(notes)
    if "profile" in result:
        result["profile"]["layers"] = result["profile"]["layers"][:TOP_LAYERS]
    if device.label == "proxy" and row["runtime"] in XNNPACK_RUNTIMES:
        row["kernels"] = f"XNNPACK on {result['host']['machine']}"
    p90 = result["latency_ms"]["p90"]
    return {**row, "label": device.label, "connection": device.connection, **result,
            "budget": {"latency_ms": profile.latency_budget_ms, "memory_mb": profile.memory_budget_mb,
                       "latency_ok": p90 <= profile.latency_budget_ms,
                       "memory_ok": result["model_rss_mb"] <= profile.memory_budget_mb}}


def compare_latency(candidate: dict, baseline: dict) -> dict:
    """Any two rows of one target, candidate vs baseline (INT8 vs its float sibling, one runtime vs another).
    speedup = baseline p50 / candidate p50; its interval comes from the two medians' 95% intervals, [baseline
    low / candidate high, baseline high / candidate low]: when both intervals hold, so does this one (so it
    holds with at least 90% probability; as a test, "faster" means the two intervals do not overlap, which is
    stricter than a 5% test). The verdict is "faster" when the whole interval is above 1, "slower" when below,
    "equal within noise" when it includes 1 (the intervals overlap: a tie), "unknown" when a row has too few
    runs for an interval or was not timed (speedup None). interleaved: both were timed in one agent call.
    cpu_speedup: the same ratio of CPU-time medians."""
    c, b = candidate.get("latency_ms"), baseline.get("latency_ms")
    interleaved = (candidate.get("target") == baseline.get("target")
                   and baseline.get("model") in (candidate.get("timing") or {}).get("interleaved_with", []))
    out = {"baseline": baseline["artifact"], "speedup": round(b["p50"] / c["p50"], 3) if c and b else None,
           "interleaved": interleaved}
    if "cpu_ms" in candidate and "cpu_ms" in baseline and candidate["cpu_ms"]["p50"] > 0:
        out["cpu_speedup"] = round(baseline["cpu_ms"]["p50"] / candidate["cpu_ms"]["p50"], 3)
    ci, bi = (c or {}).get("p50_interval"), (b or {}).get("p50_interval")
    if not ci or not bi or ci[0] <= 0:
        return {**out, "interval": None, "verdict": UNKNOWN}
    low, high = bi[0] / ci[1], bi[1] / ci[0]
    verdict = FASTER if low > 1 else SLOWER if high < 1 else EQUAL
    return {**out, "interval": [round(low, 3), round(high, 3)], "verdict": verdict}


def describe_comparison(c: dict) -> str:
    """One line: the verdict first, then the ratio and its interval."""
    if c["interval"] is None:
        return (f"{c['verdict']} (too few runs for an interval): p50 ratio {c['speedup']:.2f}x; "
                f"raise benchmark.runs")
    lo, hi = c["interval"]
    text = (f"**{c['verdict']}**: {c['speedup']:.2f}x fp32's speed (interval {lo:.2f}-{hi:.2f}x from the two "
            "medians' 95% intervals")
    text += ", timed interleaved)" if c["interleaved"] else ", timed in separate calls)"
    if "cpu_speedup" in c:
        text += f"; by CPU time {c['cpu_speedup']:.2f}x"
    return text


def add_diagnoses(rows: list[dict]) -> None:
    """Give every timed INT8 row a noise-aware comparison (row["comparison"]) and a diagnosis against the
    float row of the same runtime and target."""
    host = int8_instructions()
    for row in rows:
        if "latency_ms" not in row or not Numerics.of(row).quantized:
            continue
        floats = [r for r in rows if r["target"] == row["target"] and r["runtime"] == row["runtime"]
                  and "latency_ms" in r and not Numerics.of(r).quantized]
        if floats:
            row["comparison"] = compare_latency(row, floats[0])
            row["diagnosis"] = diagnose(row, floats[0], host if row["label"] == "proxy" else None)
            row["diagnosis"]["baseline"] = floats[0]["artifact"]
