"""INT8 post-training quantization of the OpenVINO IR with NNCF (model type chosen by architecture), falling
back to NNCF's accuracy-control search when the plain result loses more than `max_drop` top-1 points."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.config import QuantizeConfig
from targets.runtimes import OPENVINO_F32, require


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


def quantize(src: Path, dst: Path, calibration: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
             cfg: QuantizeConfig, log: Callable[[str], None]) -> dict:
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
    quantized = nncf.quantize(model, calib, model_type=kind, subset_size=len(calibration))
    drop = fp32 - 100 * _accuracy(core.compile_model(quantized, "CPU"), items)
    result = {"fp32_top1": fp32, "plain_drop": round(drop, 3), "accuracy_control": False, "max_drop": cfg.max_drop,
              "model_type": "transformer" if kind else "cnn"}
    if drop > cfg.max_drop:
        log(f"  OpenVINO INT8 loses {drop:.2f} top-1 points (max_drop {cfg.max_drop}): NNCF accuracy control")
        validation = nncf.Dataset(items, lambda item: item[0])
        params = nncf.quantization.advanced_parameters.AdvancedAccuracyRestorerParameters(
            max_num_iterations=cfg.max_fallback_layers)
        quantized = nncf.quantize_with_accuracy_control(
            model, calib, validation, validation_fn=_accuracy, max_drop=cfg.max_drop / 100,
            drop_type=nncf.DropType.ABSOLUTE, model_type=kind,
            subset_size=len(calibration), advanced_accuracy_restorer_parameters=params)
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
