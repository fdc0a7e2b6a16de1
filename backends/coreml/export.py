"""Core ML: an ML program traced from the student, normalisation baked in and class labels attached, checked
for ops its deployment target lacks."""
from __future__ import annotations

import copy
import json
import time
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from backends.base import ExportJob
from backends.coreml.package import coremltools, inspect_package
from pipeline.core.errors import UserError, root_cause
from pipeline.core.logs import quiet
from pipeline.core.numerics import floating

if TYPE_CHECKING:
    from backends.coreml import CoreMLExportConfig

FILE = "model.mlpackage"


class Deployable(nn.Module):
    """The student with the input normalisation baked in: it takes raw 0-255 pixels. (coremltools
    fuses BatchNorm into the preceding convolutions itself.)"""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)


def export_coreml(model: nn.Module, record: dict, meta: dict, cfg: CoreMLExportConfig, path, key: str
                  ) -> None:
    """An ML program with the normalisation baked in (raw 0-255 pixels in), class labels attached.

    Converted from torch.jit.trace: coremltools 9 converts traced timm ViTs directly, while its
    torch.export path needs run_decompositions first and is the less tested route on this torch."""
    ct = coremltools()
    wrapped = Deployable(copy.deepcopy(model), meta["mean"], meta["std"]).eval()
    shape = (1, meta["channels"], meta["img_size"], meta["img_size"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapped, torch.rand(shape) * 255)
    layout = ct.colorlayout.GRAYSCALE if meta["channels"] == 1 else ct.colorlayout.RGB
    inputs = [ct.ImageType(name="image", shape=shape, color_layout=layout) if cfg.input == "image"
              else ct.TensorType(name="pixels", shape=shape)]
    precision = ct.precision.FLOAT16 if cfg.precision == "fp16" else ct.precision.FLOAT32
    try:
        with quiet(logger="coremltools"):  # a tqdm bar for every graph pass on stderr
            mlmodel = ct.convert(traced, inputs=inputs, classifier_config=ct.ClassifierConfig(meta["classes"]),
                                 convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, cfg.target),
                                 compute_precision=precision)
    except Exception as exc:  # coremltools raises many types; the innermost names the op
        raise UserError(f"Core ML conversion of {record['model']} for export.coreml.target = {cfg.target} failed: "
                        f"{root_cause(exc)}; a newer target may support the op") from None
    mlmodel.author, mlmodel.license, mlmodel.version = cfg.author, cfg.license, cfg.version
    mlmodel.short_description = f"{record['model']} distilled by manifold-edge; input: raw pixels 0-255"
    mlmodel.user_defined_metadata["manifold_edge.model"] = json.dumps(
        {"model": record["model"], "kwargs": record["kwargs"], "mean": meta["mean"], "std": meta["std"],
         "classes": meta["classes"]})
    mlmodel.user_defined_metadata["manifold_edge.precision"] = cfg.precision
    mlmodel.user_defined_metadata["manifold_edge.artifact_key"] = key
    mlmodel.save(str(path))


def run(job: ExportJob) -> dict[str, dict]:
    """model.mlpackage with its package checks (when export.coreml.enabled); a UserError when the program uses
    ops its deployment target lacks."""
    coreml = job.cfg.coreml
    if not coreml.enabled:
        return {}
    start = time.perf_counter()
    export_coreml(job.model, job.record, job.meta, coreml, job.out / FILE, job.key)
    package = inspect_package(job.out / FILE, coreml.target)
    if package["unsupported_ops"]:
        raise UserError(f"{FILE} uses ops not available at export.coreml.target = {coreml.target}: "
                        f"{', '.join(package['unsupported_ops'])}; choose a newer target")
    return {"coreml": {"file": FILE, "runtime": "coreml", "precision": coreml.precision,
                       "numerics": floating(coreml.precision), "bytes": package["bytes"],
                       "seconds": round(time.perf_counter() - start, 2), "package": package}}
