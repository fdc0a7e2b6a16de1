"""Core ML packages (.mlpackage, ML program): the deployable wrapper, reading a package back as far
as Linux allows (spec, op set, weights, the MIL program), and runners: Core ML itself on macOS
("measured"), and on Linux the package's own MIL program interpreted in torch ("simulated",
targets.coreml_program).

Only macOS has the Core ML runtime; coremltools on Linux reads and writes packages but cannot predict.
"""
from __future__ import annotations

import contextlib
import io
import json
import platform
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pipeline.core.errors import UserError
from targets.coreml_program import MILProgram, UnsupportedOps
from targets.runtimes import artifact_bytes, require

IS_MACOS = platform.system() == "Darwin"


def coremltools():
    return require("coremltools", "coreml")


@contextmanager
def quiet():
    """coremltools draws a tqdm bar for every graph pass on stderr; keep the pipeline's output readable."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


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


def mil_program(path: Path):
    """The package's MIL program (coremltools' own loader; works without the Core ML runtime)."""
    ct = coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.models import utils as model_utils

    model = ct.models.MLModel(str(path), skip_model_load=True)
    with quiet():
        return model_utils._convert_model_spec_to_pymil_prog(model, model.get_spec().specificationVersion,
                                                             milproto_load)


def _ops(path: Path):
    for function in mil_program(path).functions.values():
        yield from function.operations


def decompressed_program(path: Path):
    """The package's MIL program with compressed weights (constexpr_* ops: int8, palettes) expanded to
    constants: coremltools.optimize.coreml.decompress_weights' own graph pass, without saving a package
    (then dead code elimination drops the compressed data and scales it leaves behind)."""
    ct = coremltools()
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils
    from coremltools.optimize.coreml._quantization_passes import WeightDecompressor

    model = ct.models.MLModel(str(path), skip_model_load=True)
    passes = [WeightDecompressor(op_selector=lambda op: True), PASS_REGISTRY["common::dead_code_elimination"]]
    with quiet():
        return model_utils._apply_graph_pass(model, passes, return_pymil_prog=True)


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every float weight of the package, decompressed (int8 / palettized weights expanded)."""
    weights = {}
    for function in decompressed_program(path).functions.values():
        for op in function.operations:
            value = op.val.val if op.op_type == "const" else None
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size > 1:
                weights[op.name] = value
    return weights


def inspect_package(path: Path, target: str) -> dict:
    """What can be checked on Linux: spec and opset version, op counts, ops not available at the
    deployment target, compressed weight storage, size on disk."""
    ct = coremltools()
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    deployment = getattr(ct.target, target)
    counts: Counter = Counter()
    storage: Counter = Counter()
    unsupported = set()
    for op in _ops(path):
        counts[op.op_type] += 1
        available = SSAOpRegistry.core_ops.get(op.op_type, {})
        if available and not any(t.value <= deployment.value for t in available):
            unsupported.add(op.op_type)
        if op.op_type.startswith("constexpr_"):
            storage[_storage(op)] += 1
    return {"specification_version": spec.specificationVersion, "target": target,
            "op_counts": dict(sorted(counts.items())), "unsupported_ops": sorted(unsupported),
            "compressed_weights": dict(storage), "bytes": artifact_bytes(path),
            "metadata": dict(spec.description.metadata.userDefined)}


def _storage(op) -> str:
    """How a compressed weight is stored, e.g. 'int8 affine' or '6-bit palette'."""
    if op.op_type == "constexpr_lut_to_dense":
        lut = op.lut.val
        entries = lut.shape[-2] if lut.ndim > 2 else lut.shape[-1] if lut.ndim == 1 else lut.shape[0]
        return f"{int(np.log2(entries))}-bit palette"
    inputs = {name: var.val for name, var in op.inputs.items() if getattr(var, "val", None) is not None}
    data = inputs.get("quantized_data", inputs.get("data"))
    kind = "affine" if "affine" in op.op_type or "shift_scale" in op.op_type else op.op_type
    return f"{data.dtype} {kind}" if isinstance(data, np.ndarray) else op.op_type


def package_metadata(path: Path) -> dict[str, str]:
    spec = coremltools().models.MLModel(str(path), skip_model_load=True).get_spec()
    return dict(spec.description.metadata.userDefined)


class NotSimulated(UserError):
    """A package whose program has an op the Linux simulation lacks: its rows say so, and the run goes on."""


def _scaling(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std in pixel units, from the package metadata: normalised images -> raw pixels."""
    spec = json.loads(package_metadata(path)["manifold_edge.model"])
    return (np.array(spec["mean"], np.float32).reshape(1, -1, 1, 1) * 255,
            np.array(spec["std"], np.float32).reshape(1, -1, 1, 1) * 255)


class CoreMLSimulatedRunner:
    """Linux: the package's own ML program (weights decompressed) interpreted op by op in torch, with
    every fp16 tensor rounded to fp16; targets.coreml_program says what this does not simulate."""

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
