"""One interface for running a classifier artifact in its own runtime: torch, ONNX Runtime, OpenVINO (here),
Core ML (targets/coreml.py), ExecuTorch and LiteRT (backends/executorch/runner.py, backends/litert/runner.py).

`load_runner(path)` picks the runtime by file type; a runner maps a float32 NCHW batch to logits.
Runtime packages are imported on first use, and a missing one names the pip extra to install.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.core.errors import UserError, quote
from targets.agent.host import model_bytes

# What the report says of Core ML rows off macOS (targets/coreml.py simulates them).
NEEDS_MACOS = ("Core ML prediction needs macOS: numbers from the package's own ML program run op by op in torch, "
               "fp16 tensors rounded to fp16 (simulated)")


def require(module: str, extra: str):
    """Import a runtime package or stop with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"the {module} package is missing: pip install 'manifold-edge[{extra}]' "
                        f"(or `make setup`, which installs every pinned runtime)") from None


def unsupported(runtime: str, path: Path, exc: BaseException, action: str = "run") -> UserError:
    """A runtime's refusal of a graph (an op or type it has no kernel or conversion for) as one line."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    keys = ("implementation for", "conversion rule", "Unsupported operation", "not supported")
    detail = next((line for line in lines if any(k in line for k in keys)), lines[-1] if lines else type(exc).__name__)
    return UserError(f"{runtime} cannot {action} {Path(path).name}: {detail.split(' : ')[-1]}")


class Runner(Protocol):
    runtime: str
    evaluation: str  # "measured" (the runtime itself) or "simulated" (Core ML on Linux)

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class TorchRunner:
    runtime = "torch"
    evaluation = "measured"

    def __init__(self, path: Path, threads: int = 0):
        import torch

        from stages.models import load_model

        self._torch = torch
        self.model, _ = load_model(path)
        if threads:
            torch.set_num_threads(threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self.model(self._torch.from_numpy(x)).numpy()


class OnnxRuntimeRunner:
    runtime = "onnxruntime"
    evaluation = "measured"

    def __init__(self, path: Path, threads: int = 0):
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except ort.capi.onnxruntime_pybind11_state.NotImplemented as exc:
            raise unsupported("onnxruntime", path, exc) from None
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:  # a damaged or foreign file
            raise UserError(f"onnxruntime cannot load {Path(path).name}: {str(exc).splitlines()[0][-200:]}") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


# OpenVINO's CPU plugin runs float layers in bf16 on CPUs that support it unless told otherwise.
OPENVINO_F32 = {"INFERENCE_PRECISION_HINT": "f32"}


class OpenVinoRunner:
    """OpenVINO's CPU plugin, pinned to f32 arithmetic: on CPUs with bf16 support it would otherwise
    run float layers in bf16 (seen here: logits off by 1.6e-2), and an fp32 row must mean fp32."""

    runtime = "openvino"
    evaluation = "measured"

    def __init__(self, path: Path, threads: int = 0):
        ov = require("openvino", "openvino")
        config = dict(OPENVINO_F32)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as exc:  # the CPU plugin's refusal of an op names it in one of many lines
            raise unsupported("openvino", path, exc) from None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.compiled(x)[0]


RUNNERS = {".pt": TorchRunner, ".onnx": OnnxRuntimeRunner, ".ort": OnnxRuntimeRunner, ".xml": OpenVinoRunner}


def load_runner(path: Path, threads: int = 0) -> Runner:
    suffix = Path(path).suffix
    if suffix == ".mlpackage":
        from targets.coreml import coreml_runner

        return coreml_runner(path, threads)
    if suffix == ".pte":
        from backends.executorch.runner import ExecuTorchRunner

        return ExecuTorchRunner(path, threads)
    if suffix == ".tflite":
        from backends.litert.runner import LiteRTRunner

        return LiteRTRunner(path, threads)
    try:
        return RUNNERS[Path(path).suffix](path, threads)
    except KeyError:
        raise UserError(f"{path}: no runtime for {quote(suffix)} files; known: {', '.join(RUNNERS)}, .mlpackage, .pte, "
                        ".tflite") from None


def predict(runner: Runner, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Logits for every batch, concatenated."""
    return np.concatenate([runner(np.ascontiguousarray(x, dtype=np.float32)) for x in batches])


def artifact_bytes(path: Path) -> int:
    """Size on disk, counting an OpenVINO IR's .bin and an ONNX file's external data (targets/agent/host.py)."""
    return model_bytes(str(path))
