"""LiteRT INT8 with ai-edge-quantizer on the exported fp32 .tflite (backends/litert/export.py); not litert-torch's
PT2E quantizer: it works on the very file that passed the parity check, and its recipes keep chosen ops in float by
their scope.
- dynamic range: INT8 weights per channel, activations quantized per call by the kernels.
- full integer: static INT8 weights (per channel) and activations (per tensor, min/max calibrated) for the
  FULLY_CONNECTED and convolution ops, which is where the work is; the float32 input and output stay, since the
  app feeds floats. The other ops (LayerNorm's pieces, softmax, GELU, the attention matmuls) stay float: with
  every op quantized, XNNPACK lacks INT8 kernels for several of them and the graph split into 44 partitions,
  2.8x slower than fp32 on the default student (x86, 1 thread); FC and conv alone stay one XNNPACK subgraph
  and ran 1.5x faster than fp32. The full-integer file keeps the most sensitive layers in float until `max_drop`
  is met.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import numpy as np

from backends.base import QuantizeJob, require
from backends.fallback import with_fallback
from backends.litert.export import operators
from backends.litert.runner import LiteRTRunner
from pipeline.core.errors import skippable
from pipeline.core.logs import quiet
from pipeline.core.numerics import dynamic_int8, static_int8

INT8_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
CONVERSIONS = ("QUANTIZE", "DEQUANTIZE")


def int8_op_types(path: Path) -> dict[str, int]:
    """Op types that compute in INT8: an INT8 input straight in (static: quantized activations; dynamic range:
    INT8 weights the kernel uses as they are), not through a DEQUANTIZE."""
    counts = Counter(op["op"] for op in operators(path) if op["int8_in"] and op["op"] not in CONVERSIONS)
    return dict(sorted(counts.items()))


def _quantizer(src: Path):
    require("ai_edge_quantizer", "litert")
    from ai_edge_quantizer import quantizer

    return quantizer.Quantizer(str(src))


def quantize_dynamic(src: Path, dst: Path) -> dict:
    """ai-edge-quantizer's dynamic_wi8_afp32 recipe: INT8 per-channel weights for every op that takes them."""
    q = _quantizer(src)
    from ai_edge_quantizer import recipe

    q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    with quiet(stdout=True):
        Path(dst).write_bytes(q.quantize(enable_progress_report=False).quantized_model)
    return {"op_types": int8_op_types(dst)}


def layer_name(scope: str) -> str:
    """A readable name for an op scope: its last tensor name without module paths or output numbers; the op
    that writes the model's output (its tensor named for the signature, serving_default_...) is the output layer."""
    last = [name for name in scope.split(";") if name and not name.isdigit()][-1]
    if last.startswith("serving_default_"):
        return "the output layer"
    return "/".join(part.rsplit(".", 1)[-1] for part in last.split("/"))


def _scope(scope: str) -> str:
    return f"^{re.escape(scope)}$"


def _static_recipe(src: Path, only: str | None = None, exclude: list[str] = ()):
    """Static W8A8 for the INT8_OPS (or for the one op at scope `only`) with `exclude` in float. The recipe
    names no INPUT/OUTPUT op, so the model's float32 input and output stay."""
    q = _quantizer(src)
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    for op in INT8_OPS:
        q.add_static_config(_scope(only) if only else ".*", op, activation_num_bits=8, weight_num_bits=8)
    for scope in exclude:
        q.update_quantization_recipe(_scope(scope), "*", algorithm_key=AlgorithmName.NO_QUANTIZE)
    return q


def calibrate(src: Path, images: np.ndarray) -> dict:
    """Min/max of every tensor the static recipe quantizes, over `images` (normalised NCHW, fed as the file
    takes them) one by one on one thread (so the ranges depend only on the images)."""
    runner = LiteRTRunner(src)
    signatures = runner.interpreter.get_signature_list()
    key = next(iter(signatures))
    name, inputs = signatures[key]["inputs"][0], runner.feed(images)
    with quiet(stdout=True):
        return _static_recipe(src).calibrate({key: [{name: inputs[i:i + 1]} for i in range(len(inputs))]},
                                             num_threads=1)


def quantize_static(src: Path, dst: Path, ranges: dict, only: str | None = None, exclude: list[str] = ()) -> None:
    q = _static_recipe(src, only, exclude)
    with quiet(stdout=True):
        Path(dst).write_bytes(q.quantize(ranges, enable_progress_report=False).quantized_model)


def classes(path: Path, images: np.ndarray) -> np.ndarray:
    """The file's predicted class of each image."""
    return LiteRTRunner(path)(images).argmax(1)


def rank_sensitivity(src: Path, probe: Path, ranges: dict, images: np.ndarray, reference: np.ndarray
                     ) -> list[dict]:
    """Quantize one layer alone and measure how far the logits move from fp32 (mean squared error relative
    to the fp32 logits' variance). Most harmful first."""
    scores = []
    for op in operators(src):
        if op["op"] in INT8_OPS:
            quantize_static(src, probe, ranges, only=op["scope"])
            logits = LiteRTRunner(probe)(images)
            scores.append({"node": op["scope"], "relative_mse": float(((logits - reference) ** 2).mean()
                                                                      / reference.var())})
    probe.unlink(missing_ok=True)
    return sorted(scores, key=lambda s: -s["relative_mse"])


def quantize_full_integer(src: Path, dst: Path, calibration: np.ndarray, val_images: np.ndarray,
                          val_labels: np.ndarray, max_drop: float, max_fallback_layers: int,
                          max_fallback_seconds: float | None = None) -> dict:
    """Static INT8 of every FC/conv layer; while the top-1 drop against the fp32 .tflite exceeds max_drop,
    keep the next most sensitive layer in float (at most max_fallback_layers, for at most max_fallback_seconds;
    sensitivity ranked once, on at most 256 validation images). Calibrated once, the ranges reused by every step.
    Returns backends.fallback.Fallback's dict plus the op types that compute in INT8."""
    src, dst = Path(src), Path(dst)
    ranges = calibrate(src, calibration)

    def predictions(excluded: list[str]) -> np.ndarray:
        quantize_static(src, dst, ranges, exclude=excluded)
        return classes(dst, val_images)

    def rank() -> list[dict]:
        reference = LiteRTRunner(src)(val_images[:256])
        return rank_sensitivity(src, dst.with_name(f"{dst.stem}_probe.tflite"), ranges, val_images[:256], reference)

    layers = sum(op["op"] in INT8_OPS for op in operators(src))
    result = with_fallback("LiteRT static INT8", classes(src, val_images), val_labels, max_drop, max_fallback_layers,
                           layers, predictions, rank, layer_name, max_seconds=max_fallback_seconds)
    return {**result.as_dict(), "op_types": int8_op_types(dst)}


def run(job: QuantizeJob) -> dict[str, dict]:
    """model_int8.tflite (full integer, with the fallback) and model_int8_dynamic.tflite from the fp32 .tflite."""
    cfg, found = job.cfg, {}
    if "litert" not in job.exported:
        return found
    source = job.export_dir / job.exported["litert"]["file"]
    if cfg.litert.full_integer:
        start = time.perf_counter()
        file = job.out / "model_int8.tflite"
        with skippable("quantize.litert.full_integer"):
            fallback = quantize_full_integer(source, file, job.calibration, job.val_images, job.val_labels,
                                             cfg.max_drop, cfg.max_fallback_layers, cfg.max_fallback_seconds or None)
        found["litert_int8"] = {
            "file": file.name, "runtime": "litert", "precision": "int8 static, FC/conv (float32 in/out)",
            "numerics": static_int8(),
            "op_types": fallback.pop("op_types"), "fallback": fallback,
            "calibration": {"images": job.calibration_images}, "seconds": round(time.perf_counter() - start, 2)}
    if cfg.litert.dynamic_range:
        start = time.perf_counter()
        file = job.out / "model_int8_dynamic.tflite"
        with skippable("quantize.litert.dynamic_range"):
            record = quantize_dynamic(source, file)
        found["litert_int8_dynamic"] = {
            "file": file.name, "runtime": "litert", "precision": "int8 dynamic-range", "numerics": dynamic_int8(),
            "op_types": record.get("op_types", {}), "seconds": round(time.perf_counter() - start, 2)}
    return found
