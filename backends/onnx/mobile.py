"""ONNX Runtime Mobile: the `.ort` format (what ORT's mobile packages load; the same graph, pre-optimised
and flatbuffer-serialised) and ORT's own verdict on how much of the graph the phone execution providers
(NNAPI on Android, Core ML on iOS) would take, in how many partitions.

Both come from onnxruntime's tools (`convert_onnx_models_to_ort`, `check_onnx_model_mobile_usability`),
called in-process."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from backends import artifact_bytes
from backends.base import require
from pipeline.core.logs import quiet

EXECUTION_PROVIDERS = {"NNAPI": None, "CoreML MLProgram": "coreml_supported_mlprogram_ops.md"}


def to_ort(src: Path, dst_dir: Path, target_platform: str) -> Path:
    """`src` (.onnx) as dst_dir/<stem>.ort, optimised at ORT's 'all' level for `target_platform` (fixed style:
    the optimisations are baked in, nothing is replayed at load time)."""
    require("onnxruntime", "onnx")
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(dir=dst_dir) as tmp:  # the tool also writes an operator config file
        staged = Path(tmp) / src.name
        staged.symlink_to(src.resolve())
        with quiet(stdout=True, logger="ort_format_model.utils"):
            convert_onnx_models_to_ort(staged, output_dir=Path(tmp) / "out", target_platform=target_platform,
                                       optimization_styles=[OptimizationStyle.Fixed])
        dst = dst_dir / f"{src.stem}.ort"
        (Path(tmp) / "out" / dst.name).replace(dst)
    return dst


def usability(src: Path) -> dict:
    """Per mobile execution provider: nodes it takes and partitions, as exported (dynamic batch) and with the
    input shape fixed (what an app does: batch 1), with ORT's suitability verdict (YES / MAYBE / NO)."""
    require("onnxruntime", "onnx")
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    with tempfile.TemporaryDirectory() as tmp, quiet(logger="usability_checker"):
        optimized = Path(tmp) / src.name
        optimize_model(src, optimized, use_external_initializers=True)  # as the checker does: ORT's basic level
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
        result = {}
        for ep, ops in EXECUTION_PROVIDERS.items():
            check = (lambda fixed: uc.check_nnapi_partitions(model, fixed)) if ops is None else \
                (lambda fixed, ops=ops: uc.check_coreml_partitions(model, fixed, ops))
            result[ep] = {shapes: _partitioning(check(fixed)) for shapes, fixed in
                          (("as_exported", True), ("fixed_shapes", False))}
    return result


def mobile_record(onnx_file: Path, out: Path, target_platform: str) -> dict:
    """The .ort sibling of an ONNX file (written to `out`) and ORT's NNAPI / Core ML coverage of its graph."""
    start = time.perf_counter()
    ort_file = to_ort(onnx_file, out, target_platform)
    return {"file": ort_file.name, "bytes": artifact_bytes(ort_file), "target_platform": target_platform,
            "execution_providers": usability(onnx_file), "seconds": round(time.perf_counter() - start, 2)}


def _partitioning(info) -> dict:
    return {"nodes": info.num_nodes, "supported_nodes": info.num_supported_nodes,
            "partitions": info.num_partitions, "unsupported_ops": sorted(info.unsupported_ops),
            "suitability": info.suitability().name}

