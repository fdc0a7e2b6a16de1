"""Predicted latency rows for a target that names a public device: one per artifact of the runtime the
public measurements cover (litert for tflite, onnxruntime for qnn_dlc / onnx), from the features of the
run's fp32 ONNX graph (the same graph every precision is made from), at the precision the artifact's numerics
say. Never labelled measured."""
from __future__ import annotations

from pipeline.core.numerics import FP32, Numerics
from targets.latency import Model
from targets.predict.features import features
from targets.predict.predictor import PUBLIC_SOURCES, accuracy_context, predict, public_coverage
from targets.profiles import TargetProfile

# what a predicted row's latency_ms.p90 is: the public table has one time per model and job, no spread
P90_BASIS = "upper end of the prediction interval (the public table has one time per model: no p90 to predict)"


def public_precision(numerics: Numerics) -> str | None:
    """AI Hub's name for an artifact's numerics: float (fp32 and fp16: the NPU runs float in fp16), w8a8 for
    static INT8; None for what the public table has no jobs of (dynamic INT8, palettes, weight-only, unknown)."""
    if numerics.weights in ("fp32", "fp16"):
        return "float"
    return "w8a8" if numerics == Numerics("int8", "int8", "static") else None


def not_predicted(numerics: Numerics) -> str:
    """Why an artifact of these numerics gets no prediction."""
    if numerics.scheme == "dynamic":
        what = "dynamic INT8 (activations quantized at run time)"
    elif numerics.scheme == "unknown" or "unknown" in (numerics.weights, numerics.activations):
        what = "numerics that could not be read from the file"
    else:
        what = f"{numerics.weights} weights with {numerics.activations} activations ({numerics.scheme})"
    return (f"{what}: the public table has float and statically quantized jobs only (w8a8, w8a16, w4a16...), "
            "so this artifact is not predicted")


def predicted_rows(models: list[Model], name: str, profile: TargetProfile, family: str | None = None) -> list[dict]:
    """The target's predicted rows (or one row with the error that stopped them). `family`: the public family
    of the model the artifacts were exported from (zoo.family_of; None: unknown), for its held-out error."""
    runtime = profile.predicted_runtime
    head = {"target": name, "label": "predicted", "device": profile.device, "public_device": profile.public_device,
            "public_runtime": runtime, "public_coverage": public_coverage(profile.public_device, runtime)}
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
            rows.append({**row, "error": not_predicted(m.numerics)})
            continue
        p = predict(f, profile.public_device, runtime, precision, family)
        if "error" in p:
            rows.append({**row, "error": f"{p['error']}: not predicted"})
            continue
        lo, hi = p["interval_ms"]
        rows.append({**row, "predicted": p, "features_of": source.key,
                     "accuracy_context": accuracy_context(runtime, precision),
                     "latency_ms": {"p50": p["p50_ms"], "p90": hi, "p50_interval": [lo, hi], "p90_basis": P90_BASIS},
                     "budget": {"latency_ms": profile.latency_budget_ms, "memory_mb": profile.memory_budget_mb,
                                "latency_ok": hi <= profile.latency_budget_ms, "memory_ok": True,
                                "memory": "not predicted"}})
    return rows
