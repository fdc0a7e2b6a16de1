"""LiteRT INT8 of the exported .tflite: full-integer (with layer fallback) and dynamic-range
(stages/formats/litert.py)."""
from __future__ import annotations

import time

from pipeline.core.errors import skippable
from stages.formats import litert as litert_format
from stages.quantize.job import QuantizeJob
from targets.numerics import dynamic_int8, static_int8


def artifacts(job: QuantizeJob) -> dict[str, dict]:
    cfg, found = job.cfg, {}
    if "litert" not in job.exported:
        return found
    source = job.export_dir / job.exported["litert"]["file"]
    if cfg.litert.full_integer:
        start = time.perf_counter()
        file = job.out / "model_int8.tflite"
        with skippable("quantize.litert.full_integer"):
            fallback = litert_format.quantize_full_integer(source, file, job.calibration, job.val_images,
                                                           job.val_labels, cfg.max_drop, cfg.max_fallback_layers)
        found["litert_int8"] = {
            "file": file.name, "runtime": "litert", "precision": "int8 static, FC/conv (float32 in/out)",
            "numerics": static_int8(),
            "op_types": fallback.pop("op_types"), "fallback": fallback,
            "calibration": {"images": job.calibration_images}, "seconds": round(time.perf_counter() - start, 2)}
    if cfg.litert.dynamic_range:
        start = time.perf_counter()
        file = job.out / "model_int8_dynamic.tflite"
        with skippable("quantize.litert.dynamic_range"):
            record = litert_format.quantize_dynamic(source, file)
        found["litert_int8_dynamic"] = {
            "file": file.name, "runtime": "litert", "precision": "int8 dynamic-range", "numerics": dynamic_int8(),
            "op_types": record.get("op_types", {}), "seconds": round(time.perf_counter() - start, 2)}
    return found
