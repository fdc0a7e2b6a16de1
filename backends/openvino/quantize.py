"""INT8 post-training quantization of the OpenVINO IR with NNCF (model type chosen by architecture), falling
back to NNCF's accuracy-control search when the plain result loses more than `max_drop` top-1 points."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import QuantizeJob, require
from backends.openvino.runner import OPENVINO_F32
from backends.weight_range import reduce_range
from pipeline.core.numerics import static_int8, weights_only

log = logging.getLogger(__name__)



def _accuracy(compiled, items) -> float:
    hits = total = 0
    for image, label in items:
        hits += int(compiled(image)[0].argmax() == label)
        total += 1
    return hits / max(total, 1)


def model_type(model):
    """NNCF's transformer scheme (SmoothQuant, attention-aware placement) for a graph with attention;
    None (NNCF's default scheme, meant for CNNs) otherwise."""
    nncf = require("nncf", "openvino")
    ops = {op.get_type_name() for op in model.get_ops()}
    return nncf.ModelType.TRANSFORMER if ops & {"Softmax", "ScaledDotProductAttention"} else None


def overflow_fix(cfg: Any):
    """NNCF's overflow fix (7-bit weights) on every layer where quantize.reduce_range says so (x86 without VNNI,
    by default: there the first layer only, NNCF's default, kept 84% of a small student's test predictions, every
    layer 94.5%), else NNCF's default."""
    nncf = require("nncf", "openvino")
    return nncf.OverflowFix.ENABLE if reduce_range(cfg) else nncf.OverflowFix.FIRST_LAYER


def quantize(src: Path, dst: Path, calibration: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
             cfg: Any) -> dict:
    ov = require("openvino", "openvino")
    nncf = require("nncf", "openvino")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    core = ov.Core()
    core.set_property("CPU", OPENVINO_F32)
    model = core.read_model(str(src))
    calib = nncf.Dataset([image[None] for image in calibration])
    items = [(image[None], int(label)) for image, label in zip(val_images, val_labels)]
    fp32 = 100 * _accuracy(core.compile_model(model, "CPU"), items)
    kind = model_type(model)
    advanced = nncf.AdvancedQuantizationParameters(overflow_fix=overflow_fix(cfg))
    quantized = nncf.quantize(model, calib, model_type=kind, subset_size=len(calibration),
                              advanced_parameters=advanced)
    drop = fp32 - 100 * _accuracy(core.compile_model(quantized, "CPU"), items)
    result = {"fp32_top1": fp32, "plain_drop": round(drop, 3), "accuracy_control": False, "max_drop": cfg.max_drop,
              "model_type": "transformer" if kind else "cnn", "overflow_fix": str(advanced.overflow_fix.value)}
    if drop > cfg.max_drop:
        log.info(f"OpenVINO INT8 loses {drop:.2f} top-1 points (max_drop {cfg.max_drop}): NNCF accuracy control")
        validation = nncf.Dataset(items, lambda item: item[0])
        params = nncf.quantization.advanced_parameters.AdvancedAccuracyRestorerParameters(
            max_num_iterations=cfg.max_fallback_layers)
        quantized = nncf.quantize_with_accuracy_control(
            model, calib, validation, validation_fn=_accuracy, max_drop=cfg.max_drop / 100,
            drop_type=nncf.DropType.ABSOLUTE, model_type=kind,
            subset_size=len(calibration), advanced_quantization_parameters=advanced,
            advanced_accuracy_restorer_parameters=params)
        drop = fp32 - 100 * _accuracy(core.compile_model(quantized, "CPU"), items)
        result.update(accuracy_control=True)
    result.update(drop=round(drop, 3), met=drop <= cfg.max_drop)
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
    return result


def quantized_op_types(path: Path) -> dict[str, int]:
    """Op types fed by a FakeQuantize (or FakeConvert) node, i.e. computed in INT8 by the CPU plugin."""
    ov = require("openvino", "openvino")
    model = ov.Core().read_model(str(path))
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("FakeQuantize", "FakeConvert", "Constant", "Convert"):
            continue
        sources = [op.input_value(i).get_node() for i in range(op.get_input_size())]
        # weights pass Constant -> (Convert) -> FakeQuantize or are stored quantized behind a Convert
        if any(s.get_type_name() == "FakeQuantize" for s in sources):
            counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
    return dict(sorted(counts.items()))


SPEED_CHECK_SECONDS = 4.0


def speed_check(fp32: Path, int8: Path, image: np.ndarray, seconds: float = SPEED_CHECK_SECONDS) -> dict:
    """fp32 and INT8 IR compiled on this host's CPU at 1 thread (f32 hint), timed interleaved by CPU time:
    the speed-up's median and 95% interval, and whether INT8 is worth shipping from this host's view."""
    ov = require("openvino", "openvino")
    from backends.timing import interleaved, speedup, summary

    core = ov.Core()
    config = {**OPENVINO_F32, "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    x = np.ascontiguousarray(image[None], dtype=np.float32)
    requests = {name: core.compile_model(str(path), "CPU", config).create_infer_request()
                for name, path in (("fp32", fp32), ("int8", int8))}
    samples = interleaved({name: (lambda r=r: r.infer([x])) for name, r in requests.items()}, seconds)
    ratio = speedup(samples["fp32"]["cpu"], samples["int8"]["cpu"])
    return {"threads": 1, "clock": "cpu", "fp32_ms": summary(samples["fp32"]["cpu"]),
            "int8_ms": summary(samples["int8"]["cpu"]), "speedup": ratio,
            "verdict": "faster here" if ratio["verdict"] == "faster" else "not faster here",
            "ship": ratio["verdict"] == "faster"}


def compress_weights(src: Path, dst: Path) -> None:
    """INT8 weights only (nncf.compress_weights, per-channel symmetric): a smaller file, float compute."""
    ov = require("openvino", "openvino")
    nncf = require("nncf", "openvino")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = ov.Core().read_model(str(src))
    ov.save_model(nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM), str(dst),
                  compress_to_fp16=False)


def compressed_weights(path: Path) -> dict[str, int]:
    """Op types whose weights are stored as INT8 (Constant i8/u8 -> Convert -> scale ... -> the op)."""
    ov = require("openvino", "openvino")
    model = ov.Core().read_model(str(path))
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0).get_type_name() not in ("i8", "u8"):
            continue
        node = op
        while node.get_type_name() in ("Constant", "Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
            consumers = list(node.output(0).get_target_inputs())
            if len(consumers) != 1:
                break
            node = consumers[0].get_node()
        counts[node.get_type_name()] = counts.get(node.get_type_name(), 0) + 1
    return dict(sorted(counts.items()))


def run(job: QuantizeJob) -> dict[str, dict]:
    """NNCF INT8 (accuracy-controlled; timed against fp32 on this host when asked) and INT8 weights only."""
    cfg, found = job.cfg, {}
    if not (cfg.openvino or cfg.openvino_weights):
        return found
    fp32 = job.export_dir / job.exported["openvino"]["file"]
    if cfg.openvino:
        start = time.perf_counter()
        file = job.out / "openvino_int8_model.xml"
        control = quantize(fp32, file, job.calibration, job.val_images, job.val_labels, cfg)
        found["openvino_int8"] = record = {
            "file": file.name, "runtime": "openvino", "precision": "int8 (NNCF)", "numerics": static_int8(),
            "op_types": quantized_op_types(file), "fallback": control, "seconds": round(time.perf_counter() - start, 2)}
        if cfg.openvino_speed_check:
            check = speed_check(fp32, file, job.calibration[0])
            record.update(host_speed=check, ship=check["ship"])
            s = check["speedup"]
            if not check["ship"]:
                job.note(f"`openvino_int8` is not faster than OpenVINO fp32 on this host ({s['x']:.2f}x, "
                         f"95% interval {s['interval'][0]:.2f}-{s['interval'][1]:.2f}, 1 thread, CPU time): "
                         "written but marked ship: false, so no target ships it")
    if cfg.openvino_weights:
        start = time.perf_counter()
        file = job.out / "openvino_int8_weights_model.xml"
        compress_weights(fp32, file)
        found["openvino_int8_weights"] = {
            "file": file.name, "runtime": "openvino", "precision": "int8 weights",
            "numerics": weights_only("int8", "fp32"),
            "op_types": compressed_weights(file), "seconds": round(time.perf_counter() - start, 2)}
    return found
