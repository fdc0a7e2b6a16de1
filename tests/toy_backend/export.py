"""The toy format's export: the ONNX backend's file, copied under the toy's suffix."""
from __future__ import annotations

import shutil
import time

from backends import artifact_bytes
from backends.base import ExportJob
from pipeline.core.numerics import floating

FILE = "model.onnxcopy"


def run(job: ExportJob) -> dict[str, dict]:
    start = time.perf_counter()
    shutil.copyfile(job.out / job.artifacts["onnx"]["file"], job.out / FILE)
    return {"onnx_copy": {"file": FILE, "runtime": "onnxcopy", "precision": "fp32", "numerics": floating("fp32"),
                          "bytes": artifact_bytes(job.out / FILE), "seconds": round(time.perf_counter() - start, 2)}}
