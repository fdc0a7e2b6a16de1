"""Core ML: an ML program traced from the student, normalisation baked in and class labels attached."""
from __future__ import annotations

import copy
import json
import warnings
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from pipeline.core.errors import UserError, root_cause
from pipeline.core.section import Section

if TYPE_CHECKING:
    import torch.nn as nn

COREML_TARGETS = Literal["iOS15", "iOS16", "iOS17", "iOS18", "watchOS8", "watchOS9", "watchOS10", "watchOS11",
                         "macOS12", "macOS13", "macOS14", "macOS15"]


class CoreMLExportConfig(Section):
    enabled: bool = Field(True, description="also write model.mlpackage (Core ML ML program)")
    target: COREML_TARGETS = Field("iOS17", description="minimum deployment target (iOS17 phones, "
                                                        "watchOS10 watches)")
    precision: Literal["fp16", "fp32"] = Field("fp16", description="compute precision")
    input: Literal["image", "tensor"] = Field("image", description="an image input (grayscale/RGB pixels) "
                                                                   "or a float tensor of 0-255 pixels")
    author: str = Field("manifold-edge", description="the package's author metadata")
    license: str = Field("Apache-2.0", description="the package's license metadata")
    version: str = Field("1", description="the package's version metadata")
    parity_max_rel_diff: float = Field(3e-2, gt=0, description="max |logit diff| of the package vs torch, as a "
                                       "fraction of the largest |logit| (fp16 error scales with the values)")
    parity_min_agreement: float = Field(0.99, ge=0, le=1, description="min share of equal argmax, package vs "
                                                                      "torch")


def export_coreml(model: nn.Module, record: dict, meta: dict, cfg: CoreMLExportConfig, path, key: str
                  ) -> None:
    """An ML program with the normalisation baked in (raw 0-255 pixels in), class labels attached.

    Converted from torch.jit.trace: coremltools 9 converts traced timm ViTs directly, while its
    torch.export path needs run_decompositions first and is the less tested route on this torch."""
    import torch

    from targets.coreml import Deployable, coremltools, quiet

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
        with quiet():
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
