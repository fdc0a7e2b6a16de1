"""Core ML runners on this host: Core ML itself on macOS ("measured"), and on Linux the package's own MIL
program interpreted in torch ("simulated", backends/coreml/program.py). Both take normalised images, as every
runner does, and feed the package raw pixels (its normalisation is baked in)."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch

from backends.base import NotRunHere
from backends.coreml.package import coremltools, decompressed_program, package_metadata
from backends.coreml.program import MILProgram, UnsupportedOps

IS_MACOS = platform.system() == "Darwin"


class NotSimulated(NotRunHere):
    """A package whose program has an op the Linux simulation lacks: its rows say so, and the run goes on."""


def _scaling(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std in pixel units, from the package metadata: normalised images -> raw pixels."""
    spec = json.loads(package_metadata(path)["manifold_edge.model"])
    return (np.array(spec["mean"], np.float32).reshape(1, -1, 1, 1) * 255,
            np.array(spec["std"], np.float32).reshape(1, -1, 1, 1) * 255)


class CoreMLSimulatedRunner:
    """Linux: the package's own ML program (weights decompressed) interpreted op by op in torch, with
    every fp16 tensor rounded to fp16; backends/coreml/program.py says what this does not simulate."""

    runtime = "coreml"
    evaluation = "simulated"

    def __init__(self, path: Path, threads: int = 0):
        try:
            self.program = MILProgram(decompressed_program(path))
        except UnsupportedOps as exc:
            raise NotSimulated(f"{Path(path).name} cannot be simulated: op {', '.join(exc.op_types)} (the Linux "
                               "Core ML simulation has no implementation of it; a Mac can measure it)") from None
        self.mean, self.std = _scaling(path)
        if threads:
            torch.set_num_threads(threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: normalised images, as for every runner; the package takes raw pixels, whole numbers 0-255
        (as CoreMLRunner feeds Core ML)."""
        pixels = np.clip(np.round(x * self.std + self.mean), 0, 255)
        return self.program(torch.from_numpy(np.ascontiguousarray(pixels, np.float32))).numpy()


class CoreMLRunner:
    """macOS: Core ML itself, on the compute units given (CPU_ONLY, CPU_AND_NE, ALL)."""

    runtime = "coreml"
    evaluation = "measured"

    def __init__(self, path: Path, threads: int = 0, compute_units: str = "CPU_ONLY"):
        ct = coremltools()
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = json.loads(package_metadata(path)["manifold_edge.model"])
        self.mean, self.std = _scaling(path)
        self.input = self.model.get_spec().description.input[0]
        self.classes = spec["classes"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from PIL import Image

        pixels = np.clip(np.round(x * self.std + self.mean), 0, 255).astype(np.uint8)
        rows = []
        for image in pixels:
            if self.input.type.WhichOneof("Type") == "imageType":
                mode = "L" if image.shape[0] == 1 else "RGB"
                feed = Image.fromarray(image[0] if mode == "L" else image.transpose(1, 2, 0), mode)
            else:
                feed = image[None].astype(np.float32)
            outputs = self.model.predict({self.input.name: feed})
            # The classifier's "probabilities" are the program's logits, passed through unchanged.
            table = next(v for v in outputs.values() if isinstance(v, dict))
            rows.append([table[c] for c in self.classes])
        return np.asarray(rows, np.float32)


def coreml_runner(path: Path, threads: int = 0):
    return CoreMLRunner(path, threads) if IS_MACOS else CoreMLSimulatedRunner(path, threads)
