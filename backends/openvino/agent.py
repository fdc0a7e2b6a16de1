"""The agent's OpenVINO adapter (targets/agent/adapter.py) and its kernel table. Shipped inside the agent's
zipapp: standard library, numpy, openvino (imported when a model loads) and targets.agent only."""
from __future__ import annotations

import argparse
import os

from targets.agent.adapter import Adapter, fixed_shape
from targets.agent.errors import AgentError, require
from targets.agent.layers import median_run, summarise

# OpenVINO CPU: layer types that only convert, and the precision tokens of exec_type, which names the kernel and
# its runtime precision ("jit_gemm_i8", "brgemm_avx512_amx_I8", "ref_any_I8", "jit_avx512_FP32"), in lower case.
OV_CONVERT_TYPES = {"fakequantize", "reorder", "convert", "quantize", "dequantize"}
OV_INT8_PRECISIONS = {"i8", "u8", "int8", "uint8", "i4", "u4"}
OV_FLOAT_PRECISIONS = {"f32", "fp32", "bf16", "f16", "fp16"}


def openvino_precision(layer_type: str, exec_type: str) -> str:
    """int8 | convert | float for an OpenVINO CPU layer: the layer type says conversion (FakeQuantize,
    Reorder, Convert); else exec_type's precision token (any case) says INT8 or float; a
    "...Quantized..." layer type with no precision token in exec_type counts as INT8."""
    layer = layer_type.lower()
    if layer in OV_CONVERT_TYPES:
        return "convert"
    tokens = set(exec_type.lower().replace("-", "_").split("_"))
    if tokens & OV_INT8_PRECISIONS:
        return "int8"
    if tokens & OV_FLOAT_PRECISIONS:
        return "float"
    return "int8" if "quantized" in layer else "float"


class OpenVino(Adapter):
    name = "openvino"
    title = "OpenVINO"
    module = "openvino"
    profiled = True

    def __init__(self, path: str, threads: int, precision: str, profile: bool = False):
        ov = require("openvino")
        self.version = ov.get_version()
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        if profile:
            config["PERF_COUNT"] = True
        try:
            core = ov.Core()
            self.model = core.read_model(path)
            self.compiled = core.compile_model(self.model, "CPU", config)
        except Exception as exc:
            raise AgentError("bad_model", f"OpenVINO cannot load {os.path.basename(path)}: {exc}") from None
        self.request = self.compiled.create_infer_request()
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))  # what the plugin applied
        self.runs = 0

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument_group(cls.title).add_argument(
            "--openvino-precision", default="f32", choices=("f32", "bf16", "f16", "default"),
            help="OpenVINO's inference precision hint (`default`: the plugin's own choice)")

    @classmethod
    def load(cls, args: argparse.Namespace, profile_dir: str | None = None) -> OpenVino:
        return cls(args.model, args.threads, args.openvino_precision, profile_dir is not None)

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        dims = [d.get_length() if d.is_static else 0 for d in self.model.inputs[0].get_partial_shape()]
        return fixed_shape(dims, batch, size)

    def __call__(self, x):
        self.runs += 1
        return self.request.infer([x])

    def profile(self, x) -> dict:
        return median_run(self, x, self.layers)

    def layers(self) -> dict:
        """Per-layer counters of the last inference (OpenVINO keeps one run's counters per request)."""
        nodes = []
        for info in self.request.get_profiling_info():
            us = info.real_time.total_seconds() * 1e6
            if info.status.name != "EXECUTED" or us <= 0:
                continue
            nodes.append({"name": info.node_name, "op_type": info.node_type, "us": us,
                          "precision": openvino_precision(info.node_type, info.exec_type), "kernel": info.exec_type})
        return summarise(nodes, 1, self.request.latency)
