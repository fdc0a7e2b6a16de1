"""OpenVINO IR converted from the exported ONNX file."""
from __future__ import annotations

import time

from backends import artifact_bytes
from backends.base import ExportJob, require, unsupported
from pipeline.core.numerics import floating

FILE = "openvino_model.xml"


def export_openvino(src, dst, fp16: bool) -> None:
    """The IR from the ONNX file, not from torch: the very graph that passed the ONNX checks, with no
    second tracing of the model. An op the ONNX frontend cannot convert is one line naming it."""
    ov = require("openvino", "openvino")
    try:
        model = ov.convert_model(str(src))
    except ov.frontend.OpConversionFailure as exc:
        raise unsupported("openvino", src, exc, "convert") from None
    ov.save_model(model, str(dst), compress_to_fp16=fp16)


def run(job: ExportJob) -> dict[str, dict]:
    """openvino_model.xml (+ .bin) from model.onnx, fp32 or with fp16 weights (when export.openvino)."""
    if not job.cfg.openvino:
        return {}
    fp16 = job.cfg.openvino_fp16
    start = time.perf_counter()
    export_openvino(job.out / job.artifacts["onnx"]["file"], job.out / FILE, fp16)
    return {"openvino": {"file": FILE, "runtime": "openvino", "precision": "fp16 weights" if fp16 else "fp32",
                         "numerics": floating("fp16", "fp32") if fp16 else floating("fp32"),
                         "bytes": artifact_bytes(job.out / FILE), "seconds": round(time.perf_counter() - start, 2)}}
