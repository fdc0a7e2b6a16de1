"""OpenVINO's CPU plugin on this host, for .xml IR files (the .bin beside it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.base import require, unsupported

# OpenVINO's CPU plugin runs float layers in bf16 on CPUs that support it unless told otherwise.
OPENVINO_F32 = {"INFERENCE_PRECISION_HINT": "f32"}


class OpenVinoRunner:
    """OpenVINO's CPU plugin, pinned to f32 arithmetic: on CPUs with bf16 support it would otherwise
    run float layers in bf16 (seen here: logits off by 1.6e-2), and an fp32 row must mean fp32."""

    runtime = "openvino"
    evaluation = "measured"

    def __init__(self, path: Path, threads: int = 0):
        ov = require("openvino", "openvino")
        config = dict(OPENVINO_F32)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as exc:  # the CPU plugin's refusal of an op names it in one of many lines
            raise unsupported("openvino", path, exc) from None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.compiled(x)[0]
