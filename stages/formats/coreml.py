"""Core ML: an ML program traced from the student, normalisation baked in and class labels attached."""
from __future__ import annotations

import copy
import json
import warnings

import torch

from pipeline.config import CoreMLExportConfig
from pipeline.errors import UserError, root_cause
from targets.coreml import Deployable, coremltools, quiet


def export_coreml(model: torch.nn.Module, record: dict, meta: dict, cfg: CoreMLExportConfig, path, key: str
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
