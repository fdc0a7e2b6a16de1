"""ONNX Runtime on this host's CPU, for .onnx and .ort files: parity, evaluation and the INT8 fallback's top-1."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.base import require, unsupported
from backends.onnx.agent import session_options
from pipeline.core.errors import UserError


class OnnxRuntimeRunner:
    runtime = "onnxruntime"
    evaluation = "measured"

    def __init__(self, path: Path, threads: int = 0):
        ort = require("onnxruntime", "onnx")
        try:
            self.session = ort.InferenceSession(str(path), session_options(ort, threads),
                                                providers=["CPUExecutionProvider"])
        except ort.capi.onnxruntime_pybind11_state.NotImplemented as exc:
            raise unsupported("onnxruntime", path, exc) from None
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:  # a damaged or foreign file
            raise UserError(f"onnxruntime cannot load {Path(path).name}: {str(exc).splitlines()[0][-200:]}") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]
