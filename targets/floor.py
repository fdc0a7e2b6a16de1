"""The latency floor of an ONNX model on this host: its GEMMs (MatMul, Gemm, and Conv as im2col GEMMs),
with shapes from ONNX shape inference at batch 1, each timed in ONNX Runtime's own kernels as a graph of
one-op nodes at that shape (MatMul for fp32, MatMulInteger U8S8 for INT8) with the benchmark's thread
count. Peaks are measured both in CPU time (time.process_time, all threads: it does not halve when another
process shares the core) and in wall time. floor = sum over the model's GEMMs of flops / peak.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MIN_FLOPS_PER_RUN = 2e7  # repeat a small GEMM in one graph until one run does at least this much work


@dataclass(frozen=True)
class Gemm:
    name: str
    op_type: str
    batch: int  # broadcast batch dims (attention heads) or conv groups
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


def _dims(value) -> list[int] | None:
    shape = value.type.tensor_type.shape
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in shape.dim]
    return dims if dims and 0 not in dims else None


def batch1_shapes(path: str | Path):
    """The model's graph with shapes inferred at batch 1: (graph, tensor name -> dims or None, weight names)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    weights = {i.name for i in graph.initializer}
    for value in graph.input:
        if value.name in weights:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    del graph.value_info[:]  # the exporter's symbolic shapes: infer them again at batch 1
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: _dims(v) for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    shapes.update({i.name: list(i.dims) for i in graph.initializer})
    return inferred.graph, shapes, weights


def gemm_shapes(path: str | Path) -> list[Gemm]:
    """The model's MatMul/Gemm/Conv nodes as GEMMs (batch, M, K, N) at batch size 1."""
    graph, shapes, _ = batch1_shapes(path)
    return [gemm for node in graph.node if (gemm := gemm_of(node, shapes))]


def gemm_of(node, shapes: dict) -> Gemm | None:
    """One MatMul/Gemm/Conv node as a GEMM (None for other ops or unknown shapes)."""
    ins = [shapes.get(name) for name in node.input[:2]]
    if node.op_type in ("MatMul", "MatMulInteger", "QLinearMatMul") or node.op_type == "Gemm":
        a, b = (ins if node.op_type != "QLinearMatMul" else [shapes.get(node.input[0]), shapes.get(node.input[3])])
        if not a or not b:
            return None
        attrs = {at.name: at.i for at in node.attribute}
        if node.op_type == "Gemm":
            m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
            n = b[0] if attrs.get("transB") else b[1]
            batch = 1
        else:
            a2, b2 = ([1] + a if len(a) == 1 else a), (b + [1] if len(b) == 1 else b)
            m, k, n = a2[-2], a2[-1], b2[-1]
            lead_a, lead_b = a2[:-2], b2[:-2]
            width = max(len(lead_a), len(lead_b))
            lead = np.broadcast_shapes(tuple([1] * (width - len(lead_a)) + lead_a),
                                       tuple([1] * (width - len(lead_b)) + lead_b))
            batch = int(np.prod(lead)) if lead else 1
        return Gemm(node.name, node.op_type, batch, int(m), int(k), int(n))
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        x = shapes.get(node.input[0])
        w = shapes.get(node.input[3] if node.op_type == "QLinearConv" else node.input[1])
        y = shapes.get(node.output[0])
        if not x or not w or not y:
            return None
        groups = next((at.i for at in node.attribute if at.name == "group"), 1)
        spatial = int(np.prod(y[2:]))  # im2col: output pixels x (C_in/groups * kernel) x C_out/groups
        return Gemm(node.name, node.op_type, groups * y[0], spatial, int(np.prod(w[1:])), w[0] // groups)
    return None


def _graph(op: str, m: int, k: int, n: int, copies: int, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, outputs, inits = [], [], []
    if op == "fp32":
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])
        for i in range(copies):
            inits.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), f"b{i}"))
            nodes.append(helper.make_node("MatMul", ["a", f"b{i}"], [f"y{i}"]))
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [m, n]))
    else:  # U8S8: uint8 activations, int8 weights, int32 accumulators (ORT's MLAS QGEMM)
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])
        inits.append(numpy_helper.from_array(np.array(128, np.uint8), "za"))
        inits.append(numpy_helper.from_array(np.array(0, np.int8), "zb"))
        for i in range(copies):  # 7-bit weights, as the quantize stage makes on x86 without VNNI: there ORT's
            # AVX2 kernel sums pairs of u8 x s8 products in 16 bits, which 8-bit weights can saturate (same speed)
            inits.append(numpy_helper.from_array(rng.integers(-64, 64, (k, n)).astype(np.int8), f"b{i}"))
            nodes.append(helper.make_node("MatMulInteger", ["a", f"b{i}", "za", "zb"], [f"y{i}"]))
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.INT32, [m, n]))
    graph = helper.make_graph(nodes, f"{op}_gemm", [a], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def gemm_session(op: str, m: int, k: int, n: int, threads: int, copies: int = 1):
    """An ORT session of `copies` independent one-op GEMM nodes (MatMul fp32 or MatMulInteger U8S8)."""
    import onnxruntime as ort

    from backends.onnx.agent import session_options

    model = _graph(op, m, k, n, copies)
    return ort.InferenceSession(model.SerializeToString(), session_options(ort, threads),
                                providers=["CPUExecutionProvider"])


def gemm_input(op: str, m: int, k: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if op == "fp32":
        return rng.standard_normal((m, k)).astype(np.float32)
    return rng.integers(0, 256, (m, k)).astype(np.uint8)


def measure_peak(op: str, m: int, k: int, n: int, threads: int, seconds: float = 0.3) -> dict:
    """GFLOP/s (GOP/s for INT8) of ORT's kernel at one GEMM shape: the median over timed runs, in CPU
    time and in wall time."""
    flops = 2 * m * k * n
    copies = max(1, min(64, int(MIN_FLOPS_PER_RUN // flops)))
    session = gemm_session(op, m, k, n, threads, copies)
    feed = {"a": gemm_input(op, m, k)}
    for _ in range(3):
        session.run(None, feed)
    cpu, wall = [], []
    end = time.perf_counter() + seconds
    while len(cpu) < 5 or time.perf_counter() < end:
        c0, w0 = time.process_time(), time.perf_counter()
        session.run(None, feed)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    work = flops * copies
    cpu_s, wall_s = float(np.median(cpu)), float(np.median(wall))
    return {"gflops_cpu": work / max(cpu_s, 1e-9) / 1e9, "gflops_wall": work / max(wall_s, 1e-9) / 1e9,
            "runs": len(cpu), "copies": copies}


def floor(path: str | Path, threads: int, seconds: float = 0.3) -> dict:
    """The model's GEMMs and its floor at `threads` threads, fp32 (MatMul) and INT8 (MatMulInteger U8S8):
    floor_ms (wall) and floor_cpu_ms (CPU time) = sum of flops / peak at each GEMM's own shape."""
    gemms = gemm_shapes(path)
    shapes = sorted({(g.m, g.k, g.n) for g in gemms})
    result = {"threads": threads, "gemms": [asdict(g) | {"flops": g.flops} for g in gemms],
              "gemm_flops": sum(g.flops for g in gemms)}
    for op in ("fp32", "int8"):
        peaks = {s: measure_peak(op, *s, threads, seconds) for s in shapes}
        result[op] = {
            "floor_ms": 1000 * sum(g.flops / (peaks[(g.m, g.k, g.n)]["gflops_wall"] * 1e9) for g in gemms),
            "floor_cpu_ms": 1000 * sum(g.flops / (peaks[(g.m, g.k, g.n)]["gflops_cpu"] * 1e9) for g in gemms),
            "peaks": [{"m": s[0], "k": s[1], "n": s[2], **p} for s, p in peaks.items()]}
    return result
