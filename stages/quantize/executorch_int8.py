"""ExecuTorch INT8: the torch student quantized by PT2E with the XNNPACK quantizer (static, per-channel), with
layer fallback (stages/formats/executorch.py)."""
from __future__ import annotations

import time

from pipeline.core.errors import skippable
from stages.formats import executorch as executorch_format
from stages.models import load_model
from stages.quantize.job import QuantizeJob
from targets.numerics import static_int8


def artifacts(job: QuantizeJob) -> dict[str, dict]:
    cfg = job.cfg
    if not (cfg.executorch.enabled and "executorch" in job.exported):
        return {}
    start = time.perf_counter()
    file = job.out / "model_int8.pte"
    model, record = load_model(job.distill_dir / "model.pt")
    with skippable("quantize.executorch.enabled"):
        fallback = executorch_format.quantize(model, tuple(job.calibration.shape[1:]), file, job.calibration,
                                              job.val_images, job.val_labels, cfg.max_drop, cfg.max_fallback_layers,
                                              cfg.executorch.per_channel,
                                              max_batch=job.exported["executorch"]["max_batch"], name=record["model"])
    return {"executorch_int8": {
        "file": file.name, "runtime": "executorch", "precision": "int8 static (XNNPACK quantizer" +
        (", per-channel)" if cfg.executorch.per_channel else ")"), "numerics": static_int8(),
        "op_types": fallback.pop("op_types"),
        "fallback": fallback,
        "calibration": {"images": job.calibration_images, "per_channel": cfg.executorch.per_channel},
        "seconds": round(time.perf_counter() - start, 2)}}
