"""What every quantize backend is given: the config, the exported files, and the images it calibrates and
validates on. Each backend (onnx_int8, openvino_int8, executorch_int8, litert_int8, coreml_compress) turns one
into artifact records {name: {file, runtime, precision, op_types, seconds, ...}} and notes for the report."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from stages.quantize import QuantizeConfig


@dataclass
class QuantizeJob:
    cfg: QuantizeConfig
    exported: dict  # export.json's artifacts
    export_dir: Path
    distill_dir: Path  # the torch student: ExecuTorch's PT2E quantizes the model, not a file
    out: Path
    calibration: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def calibration_images(self) -> int:
        return len(self.calibration)

    def note(self, message: str) -> None:
        """A note for the report, also logged."""
        self.notes.append(message)
        log.warning(message)
