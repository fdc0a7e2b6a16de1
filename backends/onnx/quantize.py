"""INT8 post-training quantization with ONNX Runtime: static QDQ (calibrated) and dynamic, and the
accuracy-aware fallback that keeps the most sensitive layers in float until `max_drop` is met.

Static QDQ can leave the attention matmuls (Q K^T and softmax x V: MatMuls whose both inputs are
activations) in float: quantizing them also forces the Softmax between them through Q/DQ, which
costs more than their small INT8 matmuls save (bench/int8_variants.py)."""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from backends import load_runner
from backends.base import QuantizeJob, predict, require
from backends.fallback import Fallback, with_fallback
from backends.onnx import mobile as ort_mobile
from backends.onnx.runner import OnnxRuntimeRunner
from backends.weight_range import reduce_range
from pipeline.core.errors import UserError, quote
from pipeline.core.numerics import dynamic_int8, static_int8
from targets.agent.host import int8_instructions

PREPROCESSED = "model_preprocessed.onnx"  # scratch (OnnxBackend.scratch): removed when the stage completes


def check_op_types(op_types: list[str]) -> None:
    """quantize.op_types: each an op type ONNX Runtime's quantizer knows, or a one-line error with the nearest."""
    require("onnxruntime", "onnx")
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    known = sorted({*IntegerOpsRegistry, *QDQRegistry, *QLinearOpsRegistry})
    unknown = [op for op in op_types if op not in known]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"quantize.op_types: {quote(unknown)} is not an op type ONNX Runtime quantizes "
                        f"({hint}case-sensitive ONNX names, e.g. MatMul, Gemm, Conv; the full list: "
                        "onnxruntime.quantization.registry)")


def _quantization():
    require("onnxruntime", "onnx")
    import onnxruntime.quantization as q

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs through the root logger
    return q


def _reader(images: np.ndarray, input_name: str, batch: int = 32):
    """Equal-sized calibration batches (ORT's histogram calibrators fail on a smaller last batch)."""
    q = _quantization()
    batch = min(batch, len(images))
    images = images[: len(images) - len(images) % batch]

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self):
            return next(self._batches, None)

        def rewind(self):
            self._batches = iter({input_name: images[i:i + batch]} for i in range(0, len(images), batch))

    return Reader()


def preprocess(src: Path, dst: Path) -> None:
    """ORT's recommended pre-processing: symbolic shape inference and graph optimisation."""
    _quantization().shape_inference.quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)


def attention_matmuls(path: Path) -> list[str]:
    """MatMuls whose second input is not a weight (an initializer or a Constant's output): in a ViT,
    the Q K^T and softmax x V products of every attention block."""
    onnx = require("onnx", "onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] not in constants]


def static_exclusions(src: Path, cfg: Any) -> list[str]:
    """Nodes static QDQ leaves in float before any accuracy fallback (the attention matmuls, when asked)."""
    return attention_matmuls(src) if cfg.static_attention_float else []


def quantize_static(src: Path, dst: Path, calibration: np.ndarray, cfg: Any, cache: Path,
                    exclude: list[str] = (), only: list[str] | None = None) -> None:
    """QDQ, uint8 activations / int8 weights; calibration ranges computed once and kept in `cache`.
    `exclude` comes on top of static_exclusions()."""
    q = _quantization()
    exclude = [*static_exclusions(src, cfg), *exclude]
    q.quantize_static(str(src), str(dst), _reader(calibration, _input_name(src)), quant_format=q.QuantFormat.QDQ,
                      op_types_to_quantize=list(cfg.op_types), per_channel=cfg.per_channel,
                      reduce_range=reduce_range(cfg),
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      nodes_to_exclude=exclude, nodes_to_quantize=only,
                      calibrate_method=getattr(q.CalibrationMethod, cfg.calibration_method),
                      calibration_cache_path=str(cache))


def quantize_dynamic(src: Path, dst: Path, cfg: Any) -> None:
    """int8 weights (per output channel with `dynamic_per_channel`), activations quantized per batch at
    run time. Conv included (ORT's CPU ConvInteger takes int8 weights): a CNN's work is almost all
    convolutions, and without them nothing shrinks."""
    q = _quantization()
    q.quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(cfg.op_types), weight_type=q.QuantType.QInt8,
                       per_channel=cfg.dynamic_per_channel, reduce_range=reduce_range(cfg))


def _input_name(path: Path) -> str:
    onnx = require("onnx", "onnx")
    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def quantized_op_types(path: Path) -> dict[str, int]:
    """Op types that run in INT8: in QDQ form, nodes whose every non-constant input is dequantized
    and whose output is quantized again (ORT fuses them into QLinear* kernels); in dynamic form,
    the integer ops."""
    onnx = require("onnx", "onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    requantized = {i for n in graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    counts = Counter()
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Constant"):
            continue
        if node.op_type.endswith("Integer") or node.op_type == "DynamicQuantizeMatMul":
            counts[node.op_type.replace("Integer", "")] += 1
            continue
        inputs = [i for i in node.input if i and i not in constants]
        if inputs and all(i in dequantized for i in inputs) and any(o in requantized for o in node.output):
            counts[node.op_type] += 1
    return dict(sorted(counts.items()))


def candidate_nodes(path: Path, op_types: list[str]) -> list[str]:
    onnx = require("onnx", "onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type in op_types]


def classes(path: Path, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """The file's predicted class of each image."""
    return predict(OnnxRuntimeRunner(path), (images[i:i + batch] for i in range(0, len(images), batch))).argmax(1)


def rank_sensitivity(src: Path, work: Path, calibration: np.ndarray, images: np.ndarray, cfg: Any,
                     cache: Path, reference: np.ndarray) -> list[dict]:
    """Per-layer sensitivity: quantize one layer alone and measure how far the logits move from fp32
    (mean squared error relative to the fp32 logits' variance). Most harmful first."""
    scores = []
    fixed = set(static_exclusions(src, cfg))
    for node in [n for n in candidate_nodes(src, list(cfg.op_types)) if n not in fixed]:
        probe = work / "probe.onnx"
        quantize_static(src, probe, calibration, cfg, cache, only=[node])
        logits = predict(OnnxRuntimeRunner(probe), [images])
        scores.append({"node": node, "relative_mse": float(((logits - reference) ** 2).mean() / reference.var())})
    (work / "probe.onnx").unlink(missing_ok=True)
    return sorted(scores, key=lambda s: -s["relative_mse"])


def static_with_fallback(src: Path, dst: Path, work: Path, calibration: np.ndarray, val_images: np.ndarray,
                         val_labels: np.ndarray, cfg: Any) -> Fallback:
    """Quantize everything; while the top-1 drop exceeds max_drop, keep the next most sensitive layer
    in float (at most cfg.max_fallback_layers)."""
    cache = work / "calibration.json"

    def predictions(excluded: list[str]) -> np.ndarray:
        quantize_static(src, dst, calibration, cfg, cache, exclude=excluded)
        return classes(dst, val_images)

    def rank() -> list[dict]:
        reference = predict(OnnxRuntimeRunner(src), [val_images[:256]])
        return rank_sensitivity(src, work, calibration, val_images[:256], cfg, cache, reference)

    layers = [n for n in candidate_nodes(src, list(cfg.op_types)) if n not in set(static_exclusions(src, cfg))]
    result = with_fallback("ONNX static INT8", classes(src, val_images), val_labels, cfg.max_drop,
                           cfg.max_fallback_layers, len(layers), predictions, rank,
                           max_seconds=cfg.max_fallback_seconds or None)
    cache.unlink(missing_ok=True)
    return result


def run(job: QuantizeJob) -> dict[str, dict]:
    """ONNX Runtime static QDQ (with layer fallback) and dynamic INT8, as the config asks, each with an .ort
    sibling when the export wrote one."""
    cfg, out, found = job.cfg, job.out, {}
    if not (cfg.onnx_static or cfg.onnx_dynamic):
        return found
    start = time.perf_counter()
    source = job.export_dir / job.exported["onnx"]["file"]
    if cfg.preprocess:
        preprocess(source, out / PREPROCESSED)
        source = out / PREPROCESSED
    prep_s = time.perf_counter() - start
    host = int8_instructions()
    settings = {"reduce_range": reduce_range(cfg, host), "reduce_range_setting": cfg.reduce_range,
                "host_int8_dot": host["int8_dot"], "host_machine": host["machine"]}
    if cfg.onnx_static:
        start = time.perf_counter()
        file = out / "model_int8_static.onnx"
        fallback = static_with_fallback(source, file, out, job.calibration, job.val_images, job.val_labels, cfg)
        attention = static_exclusions(source, cfg)
        found["onnx_int8_static"] = {
            "file": file.name, "runtime": "onnxruntime",
            "precision": "int8 static QDQ" + (", attention float" if attention else ""), "numerics": static_int8(),
            "op_types": quantized_op_types(file), "fallback": fallback.as_dict(),
            "calibration": {"images": job.calibration_images, "method": cfg.calibration_method,
                            "per_channel": cfg.per_channel},
            **settings, "float_attention_matmuls": attention,
            "seconds": round(time.perf_counter() - start + prep_s, 2)}
    if cfg.onnx_dynamic:
        start = time.perf_counter()
        file = out / "model_int8_dynamic.onnx"
        quantize_dynamic(source, file, cfg)
        found["onnx_int8_dynamic"] = {
            "file": file.name, "runtime": "onnxruntime",
            "precision": "int8 dynamic" + (", per-channel" if cfg.dynamic_per_channel else ""),
            "numerics": dynamic_int8(),
            "op_types": quantized_op_types(file), "per_channel": cfg.dynamic_per_channel, **settings,
            "seconds": round(time.perf_counter() - start, 2)}
    mobile = job.exported["onnx"].get("mobile")
    for record in found.values() if mobile else ():  # the export wrote an .ort: so do its INT8 variants
        record["mobile"] = _mobile(out / record["file"], out, mobile["target_platform"], job.val_images[:256])
    return found


def _mobile(onnx_file: Path, out: Path, target_platform: str, images: np.ndarray) -> dict:
    """The .ort sibling of an INT8 ONNX file, with its agreement with that file (an .ort optimised for ARM
    fuses QDQ differently from x86, so its logits may differ slightly)."""
    record = ort_mobile.mobile_record(onnx_file, out, target_platform)
    a, b = predict(load_runner(onnx_file), [images]), predict(load_runner(out / record["file"]), [images])
    record["parity"] = {"max_abs_diff": float(np.abs(a - b).max()),
                        "argmax_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
                        "images": len(images), "against": "its .onnx"}
    return record
