"""Core ML packages (.mlpackage, ML program): the deployable wrapper, reading a package back as far
as Linux allows (spec, op set, weights), and runners: Core ML itself on macOS ("measured"), and on
Linux a torch model carrying the package's own decompressed weights ("simulated").

Only macOS has the Core ML runtime; coremltools on Linux reads and writes packages but cannot predict.
"""
from __future__ import annotations

import contextlib
import io
import json
import platform
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from targets.runtimes import artifact_bytes, require

IS_MACOS = platform.system() == "Darwin"
NEEDS_MACOS = "Core ML prediction needs macOS: numbers from the package's weights in torch (simulated)"


def coremltools():
    return require("coremltools", "coreml")


@contextmanager
def quiet():
    """coremltools draws a tqdm bar for every graph pass on stderr; keep the pipeline's output readable."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Deployable(nn.Module):
    """The student with BatchNorm folded into the preceding convolutions and the input normalisation
    baked in: it takes raw 0-255 pixels. Folding first gives every weight a parameter name, so the
    package's weights can be matched back to the torch model."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = fold_batchnorm(model.eval())
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv2d -> BatchNorm2d pair inside an nn.Sequential (eval mode) into the conv."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return model


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


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every float weight of the package, decompressed (int8 / palettized weights expanded)."""
    ct = coremltools()
    import coremltools.optimize.coreml as cto

    model = ct.models.MLModel(str(path), skip_model_load=True)
    with tempfile.TemporaryDirectory(prefix="manifold-edge-coreml-") as tmp:
        decompressed = Path(tmp) / "decompressed.mlpackage"
        with quiet():
            cto.decompress_weights(model).save(str(decompressed))
        weights = {}
        for op in _ops(decompressed):
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


class CoreMLSimulatedRunner:
    """Linux: rebuild the torch student named in the package's metadata, load the package's own
    (decompressed) weights, and compute in the package's precision (fp16 -> torch half on CPU).
    It simulates weight storage and fp16 arithmetic, not Core ML's kernels or the Neural Engine."""

    runtime = "coreml"
    evaluation = "simulated"

    def __init__(self, path: Path, threads: int = 0):
        import timm

        import stages.models  # noqa: F401  (registers our timm families)

        metadata = package_metadata(path)
        spec = json.loads(metadata["manifold_edge.model"])
        student = timm.create_model(spec["model"], **spec["kwargs"])
        self.model = Deployable(student, spec["mean"], spec["std"]).eval()
        load_package_weights(self.model, read_weights(path))
        self.half = metadata.get("manifold_edge.precision") == "fp16"
        if self.half:
            self.model.half()
        self.mean, self.std = self.model.mean.float(), self.model.std.float()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: normalised images, as for every runner; the package takes raw pixels."""
        pixels = torch.from_numpy(x) * self.std + self.mean
        with torch.no_grad():
            return self.model(pixels.half() if self.half else pixels).float().numpy()


def load_package_weights(model: Deployable, weights: dict[str, np.ndarray]) -> None:
    """Copy package weights into the matching torch parameters (MIL names are the torch names with
    dots as underscores plus suffixes such as `_to_fp16`); every parameter must be found."""
    missing = []
    state = model.state_dict()
    for name, tensor in state.items():
        if name in ("mean", "std") or "num_batches_tracked" in name or name.endswith(("running_mean", "running_var")):
            continue
        stem = name.replace(".", "_")
        match = [w for key, w in weights.items() if (key == stem or key.startswith(stem + "_"))
                 and w.size == tensor.numel()]
        if not match:
            missing.append(name)
            continue
        state[name] = torch.from_numpy(np.asarray(match[0], dtype=np.float32).reshape(tensor.shape))
    if missing:
        raise ValueError(f"the package has no weights for {missing[:5]}{'...' if len(missing) > 5 else ''}")
    model.load_state_dict(state)


class CoreMLRunner:
    """macOS: Core ML itself, on the compute units given (CPU_ONLY, CPU_AND_NE, ALL)."""

    runtime = "coreml"
    evaluation = "measured"

    def __init__(self, path: Path, threads: int = 0, compute_units: str = "CPU_ONLY"):
        ct = coremltools()
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = json.loads(package_metadata(path)["manifold_edge.model"])
        self.mean = np.array(spec["mean"], np.float32).reshape(1, -1, 1, 1) * 255
        self.std = np.array(spec["std"], np.float32).reshape(1, -1, 1, 1) * 255
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
            probs = self.model.predict({self.input.name: feed})
            table = next(v for v in probs.values() if isinstance(v, dict))
            rows.append([np.log(max(table[c], 1e-12)) for c in self.classes])
        return np.asarray(rows, np.float32)


def coreml_runner(path: Path, threads: int = 0):
    return CoreMLRunner(path, threads) if IS_MACOS else CoreMLSimulatedRunner(path, threads)
