"""ONNX: the student exported by torch.onnx's dynamo exporter, checked by onnx's full checker, with its .ort
sibling (backends/onnx/mobile.py) when export.ort_mobile.enabled."""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch

from backends import artifact_bytes
from backends.base import ExportJob, require
from pipeline.core.errors import UserError, root_cause, skippable
from pipeline.core.fileio import disk_full, out_of_space
from pipeline.core.numerics import floating

FILE = "model.onnx"
MOBILE_SWITCHES = ("export.ort_mobile.enabled",)


def export_onnx(model: torch.nn.Module, name: str, shape: tuple[int, ...], path, opset: int) -> None:
    """torch.onnx's dynamo (torch.export) exporter: the maintained path for timm ViTs on torch 2.x,
    and the TorchScript exporter is deprecated. Weights are embedded (one file, models < 2 GB)."""
    require("onnxscript", "onnx")
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(model, (torch.zeros(2, *shape),), str(path), dynamo=True, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), external_data=False, verbose=False)
        except Exception as exc:  # the exporter raises many types; the innermost cause names the op
            if out_of_space(exc) or disk_full(Path(path).parent):
                raise UserError(f"disk full while writing {path}: free space in {Path(path).parent} and rerun "
                                "(completed stages are kept)") from None
            raise UserError(f"ONNX export of {name} failed: {root_cause(exc)}; try another export.opset or "
                            "a model without this operator") from None
    onnx = require("onnx", "onnx")
    onnx.checker.check_model(str(path), full_check=True)


def run(job: ExportJob) -> dict[str, dict]:
    """model.onnx (always: the other formats and the predictor start from it) and its .ort when asked."""
    from backends.onnx.mobile import mobile_record

    start = time.perf_counter()
    export_onnx(job.model, job.model_name, job.shape, job.out / FILE, job.cfg.opset)
    record = {"file": FILE, "runtime": "onnxruntime", "precision": "fp32", "numerics": floating("fp32"),
              "bytes": artifact_bytes(job.out / FILE), "seconds": round(time.perf_counter() - start, 2)}
    if job.cfg.ort_mobile.enabled:
        with skippable(*MOBILE_SWITCHES):
            record["mobile"] = mobile = mobile_record(job.out / FILE, job.out, job.cfg.ort_mobile.target_platform)
            job.check_parity("onnxruntime mobile (.ort)", mobile, MOBILE_SWITCHES)
    return {"onnx": record}
