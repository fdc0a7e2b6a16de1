"""The INT8 diagnosis: kernel classification per runtime and the named causes, on per-layer profiles
recorded from real ONNX Runtime and OpenVINO runs (tests/data/profiles/, made by record.py there:
the default student at fp32, ORT static QDQ with the attention matmuls quantized, ORT dynamic, OpenVINO
NNCF INT8; 1 thread, on a 2-core AVX-512 VNNI host)."""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from backends.onnx.agent import OnnxRuntime, onnx_precision
from backends.openvino.agent import OpenVino, openvino_precision
from targets.diagnosis import causes, diagnose, families

PROFILES = Path(__file__).parent / "data" / "profiles"
NO_VNNI = {"machine": "x86_64", "known": True, "int8_dot": []}
VNNI = {"machine": "x86_64", "known": True, "int8_dot": ["avx512_vnni"]}


def ort_result(name: str, tmp_path: Path) -> dict:
    """The agent's own ONNX Runtime profile reader on a recorded profiling JSON."""
    record = json.loads((PROFILES / f"{name}.json").read_text())
    events = tmp_path / f"{name}.json"
    events.write_text(json.dumps(record["events"]))
    runner = SimpleNamespace(session=SimpleNamespace(end_profiling=lambda: str(events)))
    return {"latency_ms": {"p50": record["p50_ms"]}, "profile": OnnxRuntime.layers(runner)}


def ov_result(name: str) -> dict:
    """The agent's own OpenVINO profile reader on recorded per-layer counters."""
    record = json.loads((PROFILES / f"{name}.json").read_text())
    infos = [SimpleNamespace(node_name=r["node_name"], node_type=r["node_type"], exec_type=r["exec_type"],
                             real_time=datetime.timedelta(microseconds=r["real_time_us"]),
                             status=SimpleNamespace(name=r["status"])) for r in record["layers"]]
    request = SimpleNamespace(get_profiling_info=lambda: infos, latency=record["latency_ms"])
    return {"latency_ms": {"p50": record["p50_ms"]}, "profile": OpenVino.layers(SimpleNamespace(request=request))}


@pytest.mark.parametrize("op_type, expected", [
    ("QLinearMatMul", "int8"), ("qlinearmatmul", "int8"), ("MatMulInteger", "int8"), ("MATMULINTEGER", "int8"),
    ("QGemm", "int8"), ("DynamicQuantizeMatMul", "int8"), ("MatMulIntegerToFloat", "int8"), ("ConvInteger", "int8"),
    ("QLinearSoftmax", "int8"), ("QAttention", "int8"), ("QLinearGlobalAveragePool", "int8"),
    ("QuantizeLinear", "convert"), ("dequantizelinear", "convert"), ("DynamicQuantizeLinear", "convert"),
    ("ReorderOutput", "convert"), ("MatMul", "float"), ("FusedMatMul", "float"), ("Softmax", "float"),
    ("LayerNormalization", "float"),
])
def test_onnxruntime_kernel_table(op_type, expected):
    assert onnx_precision(op_type) == expected


@pytest.mark.parametrize("layer, exec_type, expected", [
    ("FullyConnectedQuantizedLegacy", "jit_gemm_i8", "int8"), ("FullyConnected", "jit_gemm_I8", "int8"),
    ("FullyConnected", "brgemm_avx512_amx_I8", "int8"), ("MatMul", "ref_any_I8", "int8"),
    ("Subgraph", "jit_avx512_i8", "int8"), ("Convolution", "brgconv_avx2_U8", "int8"),
    ("FullyConnectedQuantized", "undef", "int8"),
    ("FullyConnected", "jit_avx512_FP32", "float"), ("FullyConnected", "gemm_mlas_f32", "float"),
    ("FullyConnected", "brgemm_avx512_amx_bf16", "float"), ("Concat", "ref_i32", "float"),
    ("Reorder", "ref_any_I8", "convert"), ("Reorder", "jit_uni_f32", "convert"),
    ("FakeQuantize", "jit_avx512_f32", "convert"), ("Convert", "unknown_U8", "convert"),
])
def test_openvino_kernel_table(layer, exec_type, expected):
    assert openvino_precision(layer, exec_type) == expected


def test_recorded_openvino_profiles_are_classified_case_insensitively():
    """OpenVINO names INT8 kernels in either case ("brgemm_avx512_I8", "jit_avx512_i8"): all are INT8."""
    fp32, int8 = ov_result("ov_fp32")["profile"], ov_result("ov_int8")["profile"]
    assert "int8" not in fp32["share_by_precision"]
    ops = {(e["op_type"], e["precision"]): e for e in int8["by_op_type"]}
    lower = [e for e in ops.values() if e["kernel"].endswith("_i8")]
    assert lower and all(e["precision"] == "int8" for e in lower)
    assert ("FullyConnectedQuantizedLegacy", "int8") in ops and ("Subgraph", "int8") in ops
    assert not [e for e in int8["by_op_type"] if family_of(e) == "matmul" and e["precision"] != "int8"]
    assert ops[("FakeQuantize", "convert")]["count"] > 0
    assert int8["share_by_precision"]["int8"] > 0.5 > int8["share_by_precision"]["float"]


def family_of(entry: dict) -> str | None:
    from targets.diagnosis import family

    return family(entry["op_type"], entry["precision"])


def test_recorded_onnxruntime_profiles_are_classified(tmp_path):
    fp32 = ort_result("ort_fp32", tmp_path)["profile"]
    static = ort_result("ort_int8_static", tmp_path)["profile"]
    dynamic = ort_result("ort_int8_dynamic", tmp_path)["profile"]
    assert "int8" not in fp32["share_by_precision"]
    kinds = {e["op_type"]: e["precision"] for e in static["by_op_type"]}
    assert kinds["QLinearMatMul"] == kinds["QLinearSoftmax"] == kinds["QLinearConv"] == "int8"
    assert kinds["QuantizeLinear"] == kinds["DequantizeLinear"] == "convert"
    kinds = {e["op_type"]: e["precision"] for e in dynamic["by_op_type"]}
    assert kinds["DynamicQuantizeMatMul"] == kinds["ConvInteger"] == "int8"
    assert kinds["DynamicQuantizeLinear"] == "convert" and kinds["FusedMatMul"] == "float"
    assert families(static)["matmul"]["int8_count"] == families(fp32)["matmul"]["float_count"]


def test_ort_static_diagnosis_names_int8_softmax_matmuls_and_qdq(tmp_path):
    fp32, static = ort_result("ort_fp32", tmp_path), ort_result("ort_int8_static", tmp_path)
    d = diagnose(static, fp32, VNNI)
    kinds = {c["cause"]: c for c in d["causes"]}
    assert kinds["int8_softmax"]["kernel"] == "QLinearSoftmax"
    assert kinds["slow_int8_kernel"]["int8_kernel"] == "QLinearMatMul"
    assert kinds["convert"]["share"] > 0.1
    assert not d["faster"]
    for phrase in ("QLinearSoftmax", "keep the attention matmuls and softmax in float", "QLinearMatMul",
                   "QuantizeLinear"):
        assert phrase in d["verdict"]
    assert "VNNI" not in d["verdict"] and "no_int8_instructions" not in kinds
    # no VNNI on the host AND INT8 GEMMs measured no faster than float: only then is VNNI named
    assert "no INT8 dot-product instructions (VNNI" in diagnose(static, fp32, NO_VNNI)["verdict"]


def test_ort_dynamic_diagnosis_blames_conv_integer_not_softmax_or_vnni(tmp_path):
    fp32, dynamic = ort_result("ort_fp32", tmp_path), ort_result("ort_int8_dynamic", tmp_path)
    found = causes(dynamic["profile"], fp32["profile"], NO_VNNI)
    kinds = [(c["cause"], c.get("family")) for c in found]
    assert ("slow_int8_kernel", "conv") in kinds and ("slow_int8_kernel", "matmul") not in kinds
    assert "int8_softmax" not in dict(kinds) and "no_int8_instructions" not in dict(kinds)
    assert "ConvInteger" in diagnose(dynamic, fp32, NO_VNNI)["verdict"]


def test_openvino_diagnosis_does_not_call_int8_layers_float_or_blame_vnni():
    fp32, int8 = ov_result("ov_fp32"), ov_result("ov_int8")
    slower = {**int8, "latency_ms": {"p50": 2 * fp32["latency_ms"]["p50"]}}
    d = diagnose(slower, fp32, NO_VNNI)
    assert not d["faster"] and d["int8_share"] > 0.5
    kinds = {(c["cause"], c.get("family")) for c in d["causes"]}
    assert ("slow_int8_kernel", "matmul") not in kinds and ("float_ops", None) not in kinds
    assert "VNNI" not in d["verdict"] and "stays in float" not in d["verdict"]


def synthetic(p50: float, shares: dict | None = None, ops: list | None = None) -> dict:
    row = {"latency_ms": {"p50": p50}}
    if shares is not None:
        row["profile"] = {"share_by_precision": shares, "by_op_type": ops or [], "layers_ms": 1.0}
    return row


def test_diagnosis_explains_slow_int8_without_a_float_profile():
    ops = [{"op_type": "Transpose", "precision": "float", "ms": 0.3}, {"op_type": "MatMul", "precision": "float",
                                                                      "ms": 0.2},
           {"op_type": "QLinearMatMul", "precision": "int8", "ms": 0.2},
           {"op_type": "QuantizeLinear", "precision": "convert", "ms": 0.3}]
    d = diagnose(synthetic(0.4, {"int8": 0.2, "convert": 0.3, "float": 0.5}, ops), synthetic(0.2), host=NO_VNNI)
    assert not d["faster"] and d["speedup"] == 0.5
    for phrase in ("not faster", "20% of the time is in INT8", "30% (0.300 ms) goes to conversions",
                   "MatMul", "too small"):
        assert phrase in d["verdict"]
    assert "VNNI" not in d["verdict"]  # nothing measured says the INT8 GEMMs are slow


def test_diagnosis_credits_fast_int8():
    d = diagnose(synthetic(5.0, {"int8": 0.8, "float": 0.2}), synthetic(10.0))
    assert d["faster"] and d["speedup"] == 2.0 and "2.00x faster" in d["verdict"]
