"""What a latency predictor sees of a model: costs per op class read from its ONNX graph at batch 1.

FLOPs of the GEMM-like ops (linear layers, attention's activation x activation products, dense and
depthwise convolutions), output elements of the memory-bound ops (softmax, normalisation, element-wise,
pooling), bytes moved by data-movement ops, parameter and activation bytes (fp32), node count, input
resolution and token count. Op types in none of the classes are listed in `uncovered`: the predictor
widens its interval for them and says so.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from targets.floor import batch1_shapes, gemm_of

SOFTMAX = {"Softmax", "LogSoftmax"}
NORM = {"LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
        "RMSNormalization", "LpNormalization"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "HardSigmoid", "HardSwish",
               "Clip", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Max", "Min", "Where", "Equal", "Less", "Greater",
               "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "LeakyRelu", "PRelu", "Elu", "Selu", "Cast",
               "Softplus", "Mish", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity",
               "QuantizeLinear", "DequantizeLinear", "IsNaN", "IsInf", "Mod", "BitShift", "Dropout"}
POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceMin",
        "ReduceSum", "ReduceL2", "ReduceProd", "ReduceSumSquare", "Resize", "ArgMax", "ArgMin", "TopK",
        "CumSum", "LpPool"}
MOVEMENT = {"Reshape", "Transpose", "Concat", "Slice", "Split", "Gather", "GatherElements", "GatherND", "Flatten",
            "Squeeze", "Unsqueeze", "Expand", "Pad", "Shape", "Size", "Constant", "ConstantOfShape", "Range",
            "Tile", "ScatterND", "ScatterElements", "DepthToSpace", "SpaceToDepth", "NonZero", "Trilu", "EyeLike"}
GEMM_OPS = {"MatMul", "Gemm", "Conv", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv"}
FLOAT_BYTES = 4
# the numeric features, in the order the predictor uses them
NUMERIC = ["linear_gflops", "attention_gflops", "conv_gflops", "dwconv_gflops", "softmax_melems", "norm_melems",
           "elementwise_melems", "pool_melems", "movement_mb", "param_mb", "activation_mb", "nodes", "resolution",
           "tokens", "total_gflops"]


def _elements(dims: list[int] | None) -> int:
    return int(np.prod(dims)) if dims else 0


def run_shapes(path: str | Path, graph, shapes: dict, weights: set[str]) -> dict:
    """The output shapes of every node from one ONNX Runtime run at batch 1 on zeros: for graphs where ONNX
    shape inference stops (an output shape that depends on values, e.g. the dynamo exporter's as_strided
    gathers before a classifier head)."""
    import onnx
    import onnxruntime as ort

    from backends.onnx.agent import session_options

    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=o) for n in model.graph.node for o in n.output
                              if o and o not in known)
    session = ort.InferenceSession(model.SerializeToString(), session_options(ort, optimization="disabled"),
                                   providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros(shapes[i.name], np.float32) for i in graph.input if i.name not in weights}
    outs = session.run(None, feed)
    return {o.name: list(r.shape) for o, r in zip(session.get_outputs(), outs)}


def features(path: str | Path) -> dict:
    """The op-class costs of an ONNX model at batch 1 (see the module docstring), with `uncovered`: op type ->
    node count of the op types no class covers (and of GEMM ops whose shapes could not be inferred)."""
    graph, shapes, weights = batch1_shapes(path)
    if any(node.op_type in GEMM_OPS and gemm_of(node, shapes) is None for node in graph.node):
        try:
            shapes.update(run_shapes(path, graph, shapes, weights))
        except Exception:  # noqa: BLE001 - a graph ONNX Runtime cannot run keeps the inferred shapes (and says so)
            pass
    constants = weights | {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    f = dict.fromkeys(NUMERIC, 0.0)
    uncovered: Counter[str] = Counter()
    for node in graph.node:
        out = sum(_elements(shapes.get(name)) for name in node.output)
        f["activation_mb"] += out * FLOAT_BYTES / 1e6
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if op in GEMM_OPS:
            gemm = gemm_of(node, shapes)
            if gemm is None:
                uncovered[op] += 1
            elif op.startswith(("Conv", "QLinearConv")):
                f["dwconv_gflops" if gemm.k <= 9 * 9 and gemm.n == 1 and gemm.batch > 1 else "conv_gflops"] += \
                    gemm.flops / 1e9
            elif any(name in constants for name in node.input[:2]) or op == "Gemm":
                f["linear_gflops"] += gemm.flops / 1e9
            else:
                f["attention_gflops"] += gemm.flops / 1e9
                f["tokens"] = max(f["tokens"], gemm.m)
        elif op in SOFTMAX:
            f["softmax_melems"] += out / 1e6
        elif op in NORM:
            f["norm_melems"] += out / 1e6
        elif op in ELEMENTWISE:
            f["elementwise_melems"] += out / 1e6
        elif op in POOL:
            f["pool_melems"] += out / 1e6
        elif op in MOVEMENT:
            f["movement_mb"] += out * FLOAT_BYTES / 1e6
        else:
            uncovered[op] += 1
    f["param_mb"] = sum(_elements(shapes.get(name)) for name in weights) * FLOAT_BYTES / 1e6
    f["nodes"] = float(len(graph.node))
    image = next((shapes.get(v.name) for v in graph.input if v.name not in weights), None)
    f["resolution"] = float(image[-1]) if image and len(image) == 4 else 0.0
    f["total_gflops"] = f["linear_gflops"] + f["attention_gflops"] + f["conv_gflops"] + f["dwconv_gflops"]
    return {**{k: float(f"{v:.6g}") for k, v in f.items()}, "uncovered": dict(sorted(uncovered.items()))}
