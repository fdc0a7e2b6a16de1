"""Predicted latency rows for a target that names a public device: one per artifact of the runtime the
public measurements cover (litert for tflite, onnxruntime for qnn_dlc / onnx), from the features of the
run's fp32 ONNX graph (the same graph every precision is made from). Never labelled measured."""
from __future__ import annotations

from targets.latency import Model
from targets.numerics import FP32, Numerics
from targets.predict.features import features
from targets.predict.predictor import PUBLIC_SOURCES, accuracy_context, predict
from targets.profiles import TargetProfile


def public_precision(numerics: Numerics) -> str | None:
    """AI Hub's name for an artifact's numerics: float (fp32 and fp16: the NPU runs float in fp16), w8a8 for
    static INT8; None for what the NPU does not run as such (dynamic INT8, palettes, weight-only)."""
    if not numerics.quantized:
        return "float"
    return "w8a8" if numerics == Numerics("int8", "int8", "static") else None


def predicted_rows(models: list[Model], name: str, profile: TargetProfile) -> list[dict]:
    """The target's predicted rows (or one row with the error that stopped them)."""
    runtime = profile.predicted_runtime
    head = {"target": name, "label": "predicted", "device": profile.device, "public_device": profile.public_device,
            "public_runtime": runtime}
    source = next((m for m in models if m.runtime == "onnxruntime" and m.numerics == FP32), None)
    if source is None:
        return [{**head, "artifact": None, "error": "a prediction reads the fp32 ONNX graph: enable export.onnx"}]
    f = features(source.path)
    rows = []
    for m in (m for m in models if m.runtime == PUBLIC_SOURCES[runtime] and m.runtime in profile.all_runtimes):
        row = {**head, "artifact": m.key, "runtime": m.runtime, "precision": m.precision,
               "numerics": m.numerics.as_dict()}
        precision = public_precision(m.numerics)
        if precision is None:
            rows.append({**row, "error": f"{m.precision} has no NPU counterpart in the public measurements: "
                                         "not predicted"})
            continue
        p = predict(f, profile.public_device, runtime, precision)
        if "error" in p:
            rows.append({**row, **p})
            continue
        rows.append({**row, "predicted": p, "features_of": source.key,
                     "accuracy_context": accuracy_context(runtime, precision),
                     "latency_ms": {"p50": p["p50_ms"], "p90": p["p50_ms"]},
                     "budget": {"latency_ms": profile.latency_budget_ms, "memory_mb": profile.memory_budget_mb,
                                "latency_ok": p["p50_ms"] <= profile.latency_budget_ms, "memory_ok": True,
                                "memory": "not predicted"}})
    return rows
