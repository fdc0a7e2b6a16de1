"""The numerics of a model file given by path (`manifold-edge bench`), read from the file itself, for the
precision its latency is predicted at: ONNX from its ops and initializers, LiteRT (.tflite) from its tensors'
types (ai-edge-litert's flatbuffer schema). Anything else is unknown (and not predicted)."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.numerics import FP32, UNKNOWN, Numerics, dynamic_int8, floating, static_int8, weights_only

# ONNX Runtime ops that quantize activations per call
ONNX_DYNAMIC = {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulIntegerToFloat"}
TFLITE_QUANTIZED = {3, 7, 9}  # TensorType UINT8, INT16, INT8
TFLITE_FLOAT16, TFLITE_DEQUANTIZE = 1, 6  # TensorType FLOAT16, BuiltinOperator DEQUANTIZE


def file_numerics(path: Path) -> Numerics:
    """Static INT8 when activations are quantized with fixed scales, dynamic when quantized per call,
    weights-only when only weights are; else fp16 or fp32 by the weights' type."""
    if path.suffix == ".onnx":
        return Numerics(**onnx_numerics(path))
    if path.suffix == ".tflite":
        return Numerics(**tflite_numerics(path))
    return UNKNOWN


def onnx_numerics(path: Path) -> dict[str, str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    ops = {n.op_type for n in graph.node}
    if ops & ONNX_DYNAMIC:
        return dynamic_int8()
    if any(op.startswith("QLinear") or op == "QGemm" for op in ops) or any(
            n.op_type == "QuantizeLinear" and n.input[0] not in constants for n in graph.node):
        return static_int8()
    if "MatMulNBits" in ops:
        return weights_only("int4", "fp32")
    if "DequantizeLinear" in ops:
        return weights_only("int8", "fp32")
    types = [i.data_type for i in graph.initializer]
    halves = types.count(onnx.TensorProto.FLOAT16)
    return floating("fp16") if halves > types.count(onnx.TensorProto.FLOAT) else FP32.as_dict()


def tflite_numerics(path: Path) -> dict[str, str]:
    """Quantized op outputs: static; quantized weights read by a compute op (LiteRT's hybrid kernels quantize
    the activations per call): dynamic; quantized weights only dequantized: weights-only."""
    from backends.base import require

    schema = require("ai_edge_litert.schema_py_generated", "litert")
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    activations, read_by_compute, dequantized = set(), set(), set()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        ops = [graph.Operators(o) for o in range(graph.OperatorsLength())]
        produced = {op.Outputs(j) for op in ops for j in range(op.OutputsLength())}
        constant = set(range(graph.TensorsLength())) - produced - {graph.Inputs(j) for j in range(graph.InputsLength())}
        activations |= {graph.Tensors(t).Type() for t in produced}
        for op in ops:
            code = codes[op.OpcodeIndex()]
            into = dequantized if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == TFLITE_DEQUANTIZE \
                else read_by_compute
            into |= {graph.Tensors(t).Type() for t in (op.Inputs(j) for j in range(op.InputsLength())) if t in constant}
    if activations & TFLITE_QUANTIZED:
        return static_int8()
    if read_by_compute & TFLITE_QUANTIZED:
        return dynamic_int8()
    if dequantized & TFLITE_QUANTIZED:
        return weights_only("int8", "fp32")
    return floating("fp16", "fp32") if TFLITE_FLOAT16 in dequantized else FP32.as_dict()
