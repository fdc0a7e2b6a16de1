""""Why is INT8 not faster?": compare a quantized model's latency and per-layer profile with its float
sibling on the same target, and say in plain words where the time goes."""
from __future__ import annotations

import platform

# Float op types that carry the FLOPs: left in float, they cap what INT8 can save.
HEAVY_OPS = {"MatMul", "Gemm", "Conv", "FullyConnected", "Convolution", "MatMulNBits", "FusedMatMul", "FusedGemm"}
FASTER = 1.05  # INT8 counts as faster only when it beats fp32 p50 by at least 5%


def int8_instructions() -> dict:
    """The INT8 dot-product instructions of this host's CPU (x86 VNNI/AMX, Arm dot-product/i8mm)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {"machine": platform.machine(), "known": False, "int8_dot": []}
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[1].split())
    found = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in flags]
    return {"machine": platform.machine(), "known": True, "int8_dot": found}


def diagnose(quantized: dict, baseline: dict, host: dict | None = None) -> dict:
    """quantized/baseline: agent results (latency_ms, optional profile) for one target.
    host: int8_instructions() when the numbers come from this host (a proxy), else None."""
    q50, f50 = quantized["latency_ms"]["p50"], baseline["latency_ms"]["p50"]
    speedup = f50 / q50
    result = {"speedup": round(speedup, 3), "faster": speedup >= FASTER}
    profile = quantized.get("profile")
    shares = (profile or {}).get("share_by_precision", {})
    if profile:
        result.update({"int8_share": round(shares.get("int8", 0.0), 3),
                       "convert_share": round(shares.get("convert", 0.0), 3),
                       "float_share": round(shares.get("float", 0.0), 3),
                       "float_heavy_ops": sorted({e["op_type"] for e in profile["by_op_type"]
                                                  if e["precision"] == "float" and e["op_type"] in HEAVY_OPS}),
                       "top_float_ops": [e["op_type"] for e in profile["by_op_type"] if e["precision"] == "float"][:4]})
    result["verdict"] = _verdict(result, q50, f50, host)
    return result


def _verdict(d: dict, q50: float, f50: float, host: dict | None) -> str:
    if d["faster"]:
        head = f"INT8 is {d['speedup']:.2f}x faster than fp32 (p50 {q50:.3f} ms vs {f50:.3f} ms)"
        if "int8_share" in d:
            head += f"; {100 * d['int8_share']:.0f}% of its time is in INT8 kernels"
        return head + "."
    reasons = []
    if "int8_share" in d:
        if d["int8_share"] < 0.5:
            reasons.append(f"only {100 * d['int8_share']:.0f}% of the time is in INT8 kernels, so even free INT8 "
                           f"math could save at most that much")
        if d["convert_share"] >= 0.1:
            reasons.append(f"{100 * d['convert_share']:.0f}% goes to quantize/dequantize conversions that fp32 "
                           "does not pay")
        if d["float_share"] >= 0.3:
            reasons.append(f"{100 * d['float_share']:.0f}% stays in float ops INT8 does not touch "
                           f"({', '.join(d['top_float_ops'])})")
        if d["float_heavy_ops"]:
            reasons.append(f"compute-heavy ops left unquantized: {', '.join(d['float_heavy_ops'])}")
    if f50 < 1.0:
        reasons.append(f"at {f50:.2f} ms per image the runtime's fixed per-op cost dominates: the model is too "
                       "small for faster arithmetic to show")
    if host is not None:
        if host["known"] and not host["int8_dot"]:
            reasons.append(f"this host's CPU ({host['machine']}) has no INT8 dot-product instructions "
                           "(VNNI/AMX/dotprod), so INT8 matmuls are emulated with wider arithmetic")
        elif host["int8_dot"]:
            reasons.append(f"this host has INT8 dot-product instructions ({', '.join(host['int8_dot'])}), so the "
                           "cause is the model's shape, not the CPU; host numbers are a proxy for the device")
    head = (f"INT8 is not faster here: {d['speedup']:.2f}x fp32's speed (p50 {q50:.3f} ms vs {f50:.3f} ms)")
    return head + (": " + "; ".join(reasons) + "." if reasons else ".")
