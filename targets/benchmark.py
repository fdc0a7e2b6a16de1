"""Benchmark model files on target profiles: pick the device runner, fall back to a labelled host proxy
when a device cannot be reached, and pair every INT8 result with its float sibling for the diagnosis."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import BenchmarkConfig, TargetProfile
from targets.devices import DeviceError, make_device
from targets.diagnosis import diagnose, int8_instructions

TOP_LAYERS = 10  # layers kept per result (every op type is kept)


@dataclass
class Model:
    key: str        # artifact name, e.g. onnx_int8_static
    path: Path
    runtime: str    # onnxruntime | openvino | coreml
    precision: str  # as the export/quantize stage wrote it, e.g. "int8 static QDQ"


def is_quantized(precision: str) -> bool:
    return precision.startswith("int8") or "palette" in precision


def agent_args(runtime: str, profile: TargetProfile, settings: BenchmarkConfig) -> list[str]:
    args = ["--runtime", runtime, "--threads", str(profile.threads), "--runs", str(settings.runs),
            "--max-seconds", str(settings.max_seconds), "--warmup", str(settings.warmup),
            "--throughput-batch", str(settings.throughput_batch), "--compute-units", profile.compute_units]
    if profile.input_size:
        args += ["--input-size", str(profile.input_size)]
    if runtime == "onnxruntime":
        args += ["--execution-provider", profile.execution_provider or "CPUExecutionProvider",
                 "--graph-optimization-level", profile.graph_optimization_level or "all"]
    if runtime == "openvino":
        args += ["--openvino-precision", profile.ov_precision_hint or "f32"]
    if settings.profile_layers and runtime != "coreml":
        args.append("--profile")
    return args


def measure(model: Model, name: str, profile: TargetProfile, settings: BenchmarkConfig) -> dict:
    """One artifact on one target: a row with the label measured / proxy / needs-device, or an error."""
    row = {"target": name, "artifact": model.key, "runtime": model.runtime, "precision": model.precision,
           "device": profile.device, "threads": profile.threads}
    device = make_device(profile, name)
    try:
        device.check()
    except DeviceError as exc:
        if not settings.proxy_when_unreachable or model.runtime == "coreml":
            return {**row, "label": "needs-device", "error": str(exc), "error_kind": exc.kind}
        row["note"] = f"{exc}; measured on this host instead"
        device = make_device(profile.model_copy(update={"connection": "local"}), name)
    try:
        result = device.run_agent(model.path, agent_args(model.runtime, profile, settings), profile.timeout_s)
    except DeviceError as exc:
        label = "needs-device" if exc.kind == "needs_macos" else "error"
        return {**row, "label": label, "error": str(exc), "error_kind": exc.kind}
    if device.label == "proxy" and profile.threads > (result["host"]["cores"] or 1):
        row["note"] = ((row.get("note", "") + "; ") if "note" in row else "") + (
            f"target '{name}' asks for {profile.threads} threads but this host has {result['host']['cores']} "
            "cores: its proxy latency is oversubscribed (expect a long tail)")
    if "profile" in result:
        result["profile"]["layers"] = result["profile"]["layers"][:TOP_LAYERS]
    p90 = result["latency_ms"]["p90"]
    return {**row, "label": device.label, "connection": device.connection, **result,
            "budget": {"latency_ms": profile.latency_budget_ms, "memory_mb": profile.memory_budget_mb,
                       "latency_ok": p90 <= profile.latency_budget_ms,
                       "memory_ok": result["model_rss_mb"] <= profile.memory_budget_mb}}


def add_diagnoses(rows: list[dict]) -> None:
    """Give every timed INT8 row a diagnosis against the float row of the same runtime and target."""
    host = int8_instructions()
    for row in rows:
        if "latency_ms" not in row or not is_quantized(row["precision"]):
            continue
        floats = [r for r in rows if r["target"] == row["target"] and r["runtime"] == row["runtime"]
                  and "latency_ms" in r and not is_quantized(r["precision"])]
        if floats:
            row["diagnosis"] = diagnose(row, floats[0], host if row["label"] == "proxy" else None)
            row["diagnosis"]["baseline"] = floats[0]["artifact"]
