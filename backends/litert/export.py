"""LiteRT (.tflite) export with litert-torch, run by XNNPACK on phone CPUs (backends/litert/runner.py); INT8 of
the exported file in backends/litert/quantize.py.

The fp32 file takes what an Android app has, one RGB picture as float32 pixels 0-255, channels last
[1, H, W, 3], and returns logits: the grayscale conversion (BT.601 luma, PIL's convert("L"), for 1-channel data)
and the data's normalisation are inside the model (pixel_input()), as in the Core ML export, so MediaPipe's
ImageClassifier takes the file with mean 0 and std 1 in its metadata. The export writes that input's record
into the file's metadata (backends/litert/runner.APP_INPUT; ai-edge-quantizer keeps it in the INT8 files), from
which LiteRTRunner makes these pixels out of the pipeline's normalised NCHW batches. One image per call:
litert-torch cannot lower these ViTs with a dynamic batch (the patch embedding's reshape needs a concrete size).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from backends import artifact_bytes
from backends.base import ExportJob, require
from backends.litert.runner import APP_INPUT
from pipeline.core.errors import UserError, root_cause
from pipeline.core.logs import quiet
from pipeline.core.numerics import floating

FILE = "model.tflite"
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of PIL's convert("L")


def operators(path: Path) -> list[dict]:
    """The main graph's ops from the flatbuffer: builtin name, scope (its output tensor names, as
    ai-edge-quantizer's recipes match them) and whether an INT8 tensor goes in."""
    require("ai_edge_litert", "litert")
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = codes[op.OpcodeIndex()]
        outputs = [graph.Tensors(t).Name().decode() for t in op.OutputsAsNumpy() if t >= 0]
        ops.append({"op": names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())],
                    "scope": ";".join(outputs) + ";",
                    "int8_in": any(graph.Tensors(t).Type() == schema.TensorType.INT8
                                   for t in op.InputsAsNumpy() if t >= 0)})
    return ops


def op_types(path: Path) -> dict[str, int]:
    return dict(sorted(Counter(op["op"] for op in operators(path)).items()))


def pixel_input(model, channels: int, mean: list[float], std: list[float]):
    """`model` (normalised NCHW in) behind the app's input: RGB pixels 0-255, channels last, made grayscale with
    LUMA for 1-channel data, then normalised with the data's mean and std."""
    import torch

    class PixelInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.eval()
            self.register_buffer("luma", torch.tensor(LUMA) if channels == 1 else None)
            self.register_buffer("mean", torch.tensor(mean) * 255)
            self.register_buffer("std", torch.tensor(std) * 255)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            if self.luma is not None:
                pixels = (pixels * self.luma).sum(-1, keepdim=True)
            return self.model(((pixels - self.mean) / self.std).permute(0, 3, 1, 2))

    return PixelInput().eval()


def write_app_input(path: Path, record: dict) -> None:
    """Add `record` to the file's metadata under APP_INPUT (a flatbuffer Model.metadata entry and its buffer)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    buffer, entry = schema.BufferT(), schema.MetadataT()
    buffer.data = np.frombuffer(json.dumps(record).encode(), np.uint8)
    model.buffers.append(buffer)
    entry.name, entry.buffer = APP_INPUT, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    flatbuffer_utils.write_model(model, str(path))


def export(model, shape: tuple[int, ...], path: Path, mean: list[float] | None = None,
           std: list[float] | None = None) -> dict:
    """The fp32 .tflite of `model` for one image of `shape` (C, H, W): with the data's `mean` and `std`, taking
    app pixels (pixel_input(), its record in the file); without, the model's own input. An op litert-torch
    cannot lower is a UserError naming it."""
    import torch

    channels, size = shape[0], shape[1:]
    app = None if mean is None else {"layout": "NHWC", "color": "RGB", "pixel_range": [0, 255], "channels": channels,
                                     "mean": list(mean), "std": list(std)}
    with quiet(stdout=True):
        litert_torch = require("litert_torch", "litert")
        try:
            converted = litert_torch.convert(model.eval(), (torch.zeros(1, *shape),)) if app is None else \
                litert_torch.convert(pixel_input(model, channels, mean, std), (torch.zeros(1, *size, 3),))
        except Exception as exc:  # litert-torch raises many types; the innermost names the op
            raise UserError(f"LiteRT conversion failed: {root_cause(exc)}; try a model without this "
                            "operator") from None
        converted.export(str(path))
    if app is None:
        return {"input_shape": [1, *shape], "op_types": op_types(path)}
    write_app_input(path, app)
    return {"input_shape": [1, *size, 3], "app_input": app, "op_types": op_types(path)}


def run(job: ExportJob) -> dict[str, dict]:
    """model.tflite, fp32, taking app pixels normalised with the data's mean and std (when export.litert.enabled)."""
    if not job.cfg.litert.enabled:
        return {}
    start = time.perf_counter()
    converted = export(job.model, job.shape, job.out / FILE, job.meta["mean"], job.meta["std"])
    return {"litert": {"file": FILE, "runtime": "litert", "precision": "fp32", "numerics": floating("fp32"),
                       "bytes": artifact_bytes(job.out / FILE), **converted,
                       "seconds": round(time.perf_counter() - start, 2)}}
