"""An estimate of the activation memory a model needs at batch 1, for targets where nothing was timed (Core
ML off macOS): read from the run's fp32 ONNX graph, whose shapes ONNX's shape inference gives.

Estimate: the largest sum, over the graph's nodes, of the float32 bytes of one node's activation inputs and
outputs (what must be live at once while that node runs), doubled for the runtime's scratch buffers and
the tensors kept for later nodes (e.g. a residual). It is an estimate, labelled so wherever it is shown.
No torch here.
"""
from __future__ import annotations

import math
from pathlib import Path

SCRATCH = 2.0  # the factor for scratch buffers and tensors kept alive across nodes
FLOAT32 = 4


def fp32_onnx(report: dict) -> Path | None:
    """The run's fp32 ONNX file, where the export stage wrote one."""
    entry = (report.get("stages") or {}).get("export") or {}
    record = entry.get("summary", {}).get("artifacts", {}).get("onnx")
    return Path(entry["artifact"]) / record["file"] if record else None


def activation_mb(path: Path | None) -> float | None:
    """Estimated activation MB at batch 1 (None: no ONNX file, or its shapes cannot be inferred)."""
    if path is None or not path.is_file():
        return None
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    except (DecodeError, onnx.shape_inference.InferenceError, OSError):
        return None
    weights = {t.name for t in model.graph.initializer}
    sizes = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.name in weights or not dims:
            continue
        sizes[value.name] = math.prod(d.dim_value if d.dim_value > 0 else 1 for d in dims) * FLOAT32
    peak = max((sum(sizes.get(n, 0) for n in [*node.input, *node.output]) for node in model.graph.node), default=0)
    return round(SCRATCH * peak / 1e6, 3) if peak else None
