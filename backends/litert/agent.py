"""The agent's LiteRT adapter (targets/agent/adapter.py). Shipped inside the agent's zipapp: standard library,
numpy, ai_edge_litert (imported when a model loads) and targets.agent only."""
from __future__ import annotations

import argparse
import os

from targets.agent.adapter import Adapter, fixed_shape
from targets.agent.errors import AgentError, require


class LiteRT(Adapter):
    """A .tflite file in LiteRT's interpreter, which applies the XNNPACK delegate to float and INT8 graphs by
    default (the kernels of an Android phone's CPU). No per-layer profile: ai-edge-litert 2.3.0's Python
    Interpreter has no profiler to read (its wrapper's methods are invoke, tensors and signatures;
    experimental_force_delegate_node_profiling only changes what a profiler attached from C++ records), and the
    profiler in libLiteRt.so's C API belongs to the CompiledModel API, whose Python wrapper does not expose it. On a
    device, LiteRT's benchmark_model --enable_op_profiling=true gives one (docs/targets.md)."""

    name = "litert"
    title = "LiteRT"
    module = "ai_edge_litert.interpreter"
    no_profile = ("LiteRT's Python interpreter (ai-edge-litert) has no per-op profiler to read; on the device, "
                  "LiteRT's benchmark_model --enable_op_profiling=true gives one")

    def __init__(self, path: str, threads: int):
        require(self.module)
        from importlib.metadata import version

        from ai_edge_litert.interpreter import Interpreter

        self.version = version("ai-edge-litert")
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError, UnicodeDecodeError) as exc:
            raise AgentError("bad_model", f"LiteRT cannot load {os.path.basename(path)}: "
                                          f"{str(exc).splitlines()[0]}") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output_index = self.interpreter.get_output_details()[0]["index"]

    @classmethod
    def load(cls, args: argparse.Namespace, profile_dir: str | None = None) -> LiteRT:
        return cls(args.model, args.threads)

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        return fixed_shape([int(d) for d in self.input["shape"]], batch, size)

    def __call__(self, x):
        """One invoke per image: converted models keep batch 1 as a constant in their reshapes, and XNNPACK
        cannot resize them (throughput is then back-to-back batch-1 calls)."""
        out = []
        for image in x:
            self.interpreter.set_tensor(self.input["index"], image[None])
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output_index))
        return out

    def output(self, y):
        import numpy as np

        return np.concatenate(y)

    def details(self) -> dict:
        """How many XNNPACK partitions took the graph (the phone's kernels), or none (LiteRT's own)."""
        return {"xnnpack_partitions": sum(op["op_name"] == "DELEGATE" for op in self.interpreter._get_ops_details())}
