"""ONNX Runtime: declarations only (backends/base.py)."""
from __future__ import annotations

from backends.base import Backend


class OnnxRuntimeBackend(Backend):
    name = "onnx"
    runtime = "onnxruntime"
    runtime_title = "ONNX Runtime"
    package = "onnxruntime"
    suffixes = (".onnx", ".ort")
    extra = "onnx"
    agent = "backends.onnx.agent:OnnxRuntime"
    profiled = True


BACKEND = OnnxRuntimeBackend()
