"""OpenVINO IR converted from the exported ONNX file."""
from __future__ import annotations

from targets.runtimes import require, unsupported


def export_openvino(src, dst, fp16: bool) -> None:
    """The IR from the ONNX file, not from torch: the very graph that passed the ONNX checks, with no
    second tracing of the model. An op the ONNX frontend cannot convert is one line naming it."""
    ov = require("openvino", "openvino")
    try:
        model = ov.convert_model(str(src))
    except ov.frontend.OpConversionFailure as exc:
        raise unsupported("openvino", src, exc, "convert") from None
    ov.save_model(model, str(dst), compress_to_fp16=fp16)
