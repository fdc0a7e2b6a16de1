""""Why is INT8 not faster?": compare a quantized model's latency and per-layer profile with its float
sibling on the same target, and name the measured cause in plain words.

The profiles are the agent's (targets/agent/layers.py `summarise`): per op type, its precision as the runtime
reported it (int8 / float / convert kernels, classified per runtime), time and kernel name. The causes,
each from both profiles:
- slow_int8_kernel: an INT8 layer type (MatMul/Gemm/FullyConnected, Conv) takes about as long as, or
  longer than, the fp32 model's layers of the same type;
- int8_softmax: Softmax/attention costs more in the INT8 model than in fp32 (ORT static quantizing the
  attention matmuls forces a QLinearSoftmax with its own requantization);
- convert: quantize/dequantize/reorder conversions that fp32 does not pay;
- float_ops: time left in float ops INT8 does not touch, and compute-heavy ops left in float;
- no_int8_instructions: the host CPU has no INT8 dot-product instructions (VNNI/AMX/dotprod) AND its INT8
  GEMM kernels measured slower than float: only then is missing VNNI named.
"""
from __future__ import annotations

import re

# Float op types that carry the FLOPs: left in float, they cap what INT8 can save.
HEAVY_OPS = {"MatMul", "Gemm", "Conv", "FullyConnected", "Convolution", "MatMulNBits", "FusedMatMul", "FusedGemm",
             "FusedConv"}
FASTER = 1.05  # without a noise-aware comparison, INT8 counts as faster when it beats fp32 p50 by at least 5%
SLOW_KERNEL = 0.9  # INT8 layers of a type that take >= 90% of fp32's time for that type are not paying off...
MATTERS = 0.05  # ...when they are >= 5% of the INT8 model's layer time
SOFTMAX_GROWTH = 1.5  # softmax/attention at >= 1.5x fp32's time...
SOFTMAX_SHARE = 0.03  # ...and the extra >= 3% of fp32's layer time
CONVERT_SHARE = 0.1
FLOAT_SHARE = 0.3
# Layer families, matched in lower case on the op/layer type (ORT op types, OpenVINO layer types).
FAMILIES = (("attention", re.compile(r"attention|sdpa|^mha$")), ("softmax", re.compile(r"softmax")),
            ("matmul", re.compile(r"matmul|gemm|fullyconnected|innerproduct")), ("conv", re.compile(r"conv(?!ert)")))
FAMILY_NAMES = {"attention": "attention", "softmax": "Softmax", "matmul": "MatMul/Gemm", "conv": "Conv"}


def family(op_type: str, precision: str = "float") -> str | None:
    """attention | softmax | matmul | conv, or None (conversions belong to no family)."""
    if precision == "convert":
        return None
    op = op_type.lower()
    return next((name for name, pattern in FAMILIES if pattern.search(op)), None)


def families(profile: dict) -> dict[str, dict]:
    """Per family: total ms, ms and count in INT8 / float kernels, and the kernel taking most time in each."""
    out: dict[str, dict] = {}
    for e in profile.get("by_op_type", []):
        name = family(e["op_type"], e["precision"])
        if name is None:
            continue
        f = out.setdefault(name, {"ms": 0.0, "int8_ms": 0.0, "float_ms": 0.0, "int8_count": 0, "float_count": 0,
                                  "int8_kernel": None, "float_kernel": None, "_best": {}})
        f["ms"] += e["ms"]
        f[f"{e['precision']}_ms"] += e["ms"]
        f[f"{e['precision']}_count"] += e.get("count", 1)
        best = f["_best"]
        if e["ms"] > best.get(e["precision"], -1.0):
            best[e["precision"]] = e["ms"]
            f[f"{e['precision']}_kernel"] = e.get("kernel") or e["op_type"]
    for f in out.values():
        del f["_best"]
    return out


def _ms(ms: float) -> str:
    return f"{ms:.3f} ms"


def causes(quantized: dict, baseline: dict | None, host: dict | None = None) -> list[dict]:
    """The measured causes, largest first within each kind. quantized/baseline: agent profiles."""
    found: list[dict] = []
    q_total = quantized.get("layers_ms") or 0.0
    q_fam = families(quantized)
    b_fam = families(baseline) if baseline else {}
    b_total = (baseline or {}).get("layers_ms") or 0.0
    if baseline:
        for name in ("matmul", "conv"):
            q, b = q_fam.get(name), b_fam.get(name)
            if not q or not b or not q["int8_ms"]:
                continue
            # fp32's time for the layers that run INT8: its whole family less what stayed float in the INT8 model
            same = b["ms"] - q["float_ms"]
            if same > 0 and q["int8_ms"] >= SLOW_KERNEL * same and q["int8_ms"] >= MATTERS * q_total:
                found.append({"cause": "slow_int8_kernel", "family": name, "int8_ms": q["int8_ms"], "float_ms": same,
                              "int8_kernel": q["int8_kernel"], "float_kernel": b["float_kernel"],
                              "text": f"INT8 {FAMILY_NAMES[name]} kernels ({q['int8_kernel']}) take {_ms(q['int8_ms'])}"
                                      f" vs {_ms(same)} for the same layers in fp32 ({b['float_kernel']}): "
                                      f"{same / q['int8_ms']:.2f}x, no faster than their float sibling"})
        for name in ("softmax", "attention"):
            q, b = q_fam.get(name), b_fam.get(name, {"ms": 0.0})
            if not q or not q["int8_ms"]:  # only a softmax/attention that INT8 changed (QLinearSoftmax, QAttention)
                continue
            extra = q["ms"] - b["ms"]
            if q["ms"] >= SOFTMAX_GROWTH * b["ms"] and b_total and extra >= SOFTMAX_SHARE * b_total:
                forced = " (quantized attention matmuls force an INT8 softmax with its own requantization; " \
                         "keep the attention matmuls and softmax in float)" if name == "softmax" else ""
                kernel = q["int8_kernel"]
                found.append({"cause": "int8_softmax", "family": name, "int8_model_ms": q["ms"],
                              "float_model_ms": b["ms"], "kernel": kernel,
                              "text": f"{FAMILY_NAMES[name]} ({kernel}) costs {_ms(q['ms'])}, "
                                      f"{100 * q['ms'] / q_total:.0f}% of the INT8 model's layer time, vs "
                                      f"{_ms(b['ms'])} ({100 * b['ms'] / b_total:.0f}%) in fp32{forced}"})
    convert_ops = [e for e in quantized.get("by_op_type", []) if e["precision"] == "convert"]
    convert_ms = sum(e["ms"] for e in convert_ops)
    base_convert = sum(e["ms"] for e in (baseline or {}).get("by_op_type", []) if e["precision"] == "convert")
    extra_convert = convert_ms - base_convert
    if q_total and extra_convert >= CONVERT_SHARE * q_total:
        names = sorted({e["op_type"] for e in convert_ops}, key=lambda o: -sum(e["ms"] for e in convert_ops
                                                                             if e["op_type"] == o))
        found.append({"cause": "convert", "ms": extra_convert, "share": extra_convert / q_total,
                      "text": f"{100 * extra_convert / q_total:.0f}% ({_ms(extra_convert)}) goes to conversions "
                              f"fp32 does not pay ({', '.join(names[:3])})"})
    floats = [e for e in quantized.get("by_op_type", []) if e["precision"] == "float"]
    float_ms = sum(e["ms"] for e in floats)
    if q_total and float_ms >= FLOAT_SHARE * q_total:
        found.append({"cause": "float_ops", "share": float_ms / q_total,
                      "text": f"{100 * float_ms / q_total:.0f}% stays in float ops INT8 does not touch "
                              f"({', '.join(e['op_type'] for e in floats[:4])})"})
    heavy = [e for e in floats if e["op_type"] in HEAVY_OPS or family(e["op_type"]) in ("matmul", "conv")]
    if heavy:
        found.append({"cause": "float_heavy_ops", "ops": sorted({e["op_type"] for e in heavy}),
                      "text": "compute-heavy ops left in float: " + ", ".join(
                          f"{e['op_type']} x{e.get('count', 1)} ({_ms(e['ms'])})" for e in heavy)})
    slow_gemm = [c for c in found if c["cause"] == "slow_int8_kernel" and c["family"] == "matmul"]
    if host is not None and host.get("known") and not host.get("int8_dot") and slow_gemm:
        found.append({"cause": "no_int8_instructions",
                      "text": f"this CPU ({host['machine']}) has no INT8 dot-product instructions (VNNI/AMX/dotprod), "
                              "and its INT8 GEMM kernels measured no faster than float ones"})
    return found


def diagnose(quantized: dict, baseline: dict, host: dict | None = None) -> dict:
    """quantized/baseline: agent results (latency_ms, optional profile) for one target.
    host: int8_instructions() when the numbers come from this host (a proxy), else None. "Faster" follows the
    row's noise-aware comparison (targets.latency.compare_latency) when it has one."""
    q50, f50 = quantized["latency_ms"]["p50"], baseline["latency_ms"]["p50"]
    speedup = f50 / q50
    measured = (quantized.get("comparison") or {}).get("verdict")
    result = {"speedup": round(speedup, 3), "faster": measured == "faster" if measured else speedup >= FASTER}
    profile = quantized.get("profile")
    shares = (profile or {}).get("share_by_precision", {})
    if profile:
        floats = [e for e in profile["by_op_type"] if e["precision"] == "float"]
        result.update({"int8_share": round(shares.get("int8", 0.0), 3),
                       "convert_share": round(shares.get("convert", 0.0), 3),
                       "float_share": round(shares.get("float", 0.0), 3),
                       "float_heavy_ops": sorted({e["op_type"] for e in floats
                                                  if e["op_type"] in HEAVY_OPS or family(e["op_type"]) in
                                                  ("matmul", "conv")}),
                       "top_float_ops": [e["op_type"] for e in floats][:4],
                       "causes": causes(profile, baseline.get("profile"), host)})
    result["verdict"] = _verdict(result, q50, f50, measured)
    return result


def _verdict(d: dict, q50: float, f50: float, measured: str | None) -> str:
    if d["faster"]:
        head = f"INT8 is {d['speedup']:.2f}x faster than fp32 (p50 {q50:.3f} ms vs {f50:.3f} ms)"
        if "int8_share" in d:
            head += f"; {100 * d['int8_share']:.0f}% of its time is in INT8 kernels"
        limits = [c["text"] for c in d.get("causes", []) if c["cause"] in ("slow_int8_kernel", "int8_softmax")]
        return head + ("; what still holds it back: " + "; ".join(limits) if limits else "") + "."
    reasons = [c["text"] for c in d.get("causes", [])]
    if "int8_share" in d and d["int8_share"] < 0.5:
        reasons.append(f"only {100 * d['int8_share']:.0f}% of the time is in INT8 kernels, so even free INT8 "
                       f"math could save at most that much")
    if f50 < 1.0:
        reasons.append(f"at {f50:.2f} ms per image the runtime's fixed per-op cost is a large part: the model may be "
                       "too small for faster arithmetic to show")
    head = f"INT8 is not faster here{f' ({measured})' if measured else ''}: {d['speedup']:.2f}x fp32's speed " \
           f"(p50 {q50:.3f} ms vs {f50:.3f} ms)"
    return head + (": " + "; ".join(reasons) + "." if reasons else ".")
