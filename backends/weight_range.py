"""Whether INT8 weights take 7 bits instead of 8 (quantize.reduce_range), for the ONNX and OpenVINO backends."""
from __future__ import annotations

from typing import Any

from targets.agent.host import int8_instructions


def reduce_range(cfg: Any, host: dict | None = None) -> bool:
    """7-bit weights: ONNX Runtime and NNCF recommend them on x86 without VNNI, where the AVX2 U8S8 kernel's
    16-bit intermediate sums can saturate. `host`: targets.agent.host.int8_instructions() (default: this host)."""
    if cfg.reduce_range != "auto":
        return cfg.reduce_range == "on"
    host = host or int8_instructions()
    return host["known"] and host["machine"].lower() in ("x86_64", "amd64", "i686", "x86") and not host["int8_dot"]
