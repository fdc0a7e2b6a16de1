"""ONNX: the student exported by torch.onnx's dynamo exporter, checked by onnx's full checker."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from pipeline.core.errors import UserError, root_cause
from pipeline.core.fileio import disk_full, out_of_space
from targets.runtimes import require


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
