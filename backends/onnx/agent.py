"""The agent's ONNX Runtime adapter (targets/agent/adapter.py), its kernel table and the one SessionOptions set-up
(`session_options`). Shipped inside the agent's zipapp: standard library, numpy, onnxruntime (imported when a
model loads) and targets.agent only."""
from __future__ import annotations

import argparse
import json
import os
import sys

from targets.agent.adapter import Adapter, fixed_shape
from targets.agent.errors import AgentError, require
from targets.agent.layers import PROFILE_RUNS, summarise

ORT_OPTIMIZATION = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                    "all": "ORT_ENABLE_ALL"}
# What ONNX Runtime's profile calls an INT8 compute kernel, a conversion (quantize, dequantize, layout reorder,
# type convert) and, by elimination, a float kernel: the node's op type (contrib ops included) as its profiling
# JSON names it, matched in lower case.
ORT_INT8_OPS = {"qlinearmatmul", "qlinearconv", "qgemm", "matmulinteger", "matmulintegertofloat", "convinteger",
                "dynamicquantizematmul", "qattention", "qlinearsoftmax", "qlinearadd", "qlinearmul",
                "qlinearsigmoid", "qlinearleakyrelu", "qlinearconcat", "qlinearwhere", "qlinearaveragepool",
                "qlinearglobalaveragepool", "qlinearreducemean", "qembedlayernormalization", "dynamicquantizelstm"}
ORT_INT8_PREFIXES = ("qlinear", "qordered")  # QLinear* / QOrdered* kernels not listed above
ORT_CONVERT_OPS = {"quantizelinear", "dequantizelinear", "dynamicquantizelinear", "cast", "reorderinput",
                   "reorderoutput"}


def session_options(ort, threads: int = 0, optimization: str = "all", profile_prefix: str | None = None):
    """SessionOptions for one model on the CPU: `threads` intra-op threads (0: ONNX Runtime's default, one per
    core), one inter-op thread and sequential execution, the graph optimisation level by its ORT_OPTIMIZATION
    name, warnings off; profiling into files starting with profile_prefix, when given. ort: the onnxruntime
    module."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPTIMIZATION[optimization])
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def onnx_precision(op_type: str) -> str:
    """int8 | convert | float for an ONNX Runtime node op type (QLinearMatMul, MatMulInteger, QGemm...)."""
    op = op_type.lower()
    if op in ORT_CONVERT_OPS:
        return "convert"
    if op in ORT_INT8_OPS or op.startswith(ORT_INT8_PREFIXES) or "integer" in op:
        return "int8"
    return "float"


class OnnxRuntime(Adapter):
    name = "onnxruntime"
    title = "ONNX Runtime"
    module = "onnxruntime"
    profiled = True

    def __init__(self, path: str, threads: int, profile_dir: str | None = None,
                 provider: str = "CPUExecutionProvider", optimization: str = "all"):
        ort = require("onnxruntime")
        self.version = ort.__version__
        options = session_options(ort, threads, optimization, profile_dir and os.path.join(profile_dir, "ort"))
        if provider not in ort.get_available_providers():
            raise AgentError("runtime_missing", f"this onnxruntime build ({sys.executable}) has no {provider} "
                                                f"(it has {', '.join(ort.get_available_providers())}): install "
                                                "a build with it, or set the target's execution_provider = "
                                                "'CPUExecutionProvider'")
        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        self.provider, self.optimization = provider, optimization
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # InvalidGraph, Fail, NoSuchFile...
            raise AgentError("bad_model", f"ONNX Runtime cannot load {os.path.basename(path)}: {exc}") from None
        self.input = self.session.get_inputs()[0]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(cls.title)
        group.add_argument("--execution-provider", default="CPUExecutionProvider",
                           help="ONNX Runtime execution provider")
        group.add_argument("--graph-optimization-level", default="all", choices=tuple(ORT_OPTIMIZATION),
                           help="ONNX Runtime graph optimisation level")

    @classmethod
    def load(cls, args: argparse.Namespace, profile_dir: str | None = None) -> OnnxRuntime:
        return cls(args.model, args.threads, profile_dir, args.execution_provider, args.graph_optimization_level)

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        return fixed_shape(self.input.shape, batch, size)

    def __call__(self, x):
        return self.session.run(None, {self.input.name: x})

    def free_batch(self) -> bool:
        return not isinstance(self.input.shape[0], int)

    def profile(self, x) -> dict:
        for _ in range(PROFILE_RUNS):
            self(x)
        return self.layers()

    def layers(self) -> dict:
        """Per-node kernel times from the profiling JSON, per run."""
        with open(self.session.end_profiling()) as f:
            events = json.load(f)
        runs = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        nodes: dict[str, dict] = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                name = e["name"][: -len("_kernel_time")]
                op = e.get("args", {}).get("op_name", "?")
                entry = nodes.setdefault(name, {"name": name, "op_type": op, "us": 0.0})
                entry["us"] += e["dur"]
        n = max(len(runs), 1)
        for entry in nodes.values():
            entry["precision"] = onnx_precision(entry["op_type"])
        return summarise(list(nodes.values()), n, sum(runs) / n / 1000 if runs else None)
