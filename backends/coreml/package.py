"""A Core ML package (.mlpackage, ML program) read back as far as Linux allows: its spec and metadata, its MIL
program (compressed weights expanded or not), its op set checked against the deployment target, and how its
compressed weights are stored. coremltools reads and writes packages on every OS; only macOS can predict."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from backends import artifact_bytes
from backends.base import require
from pipeline.core.logs import quiet

# What coremltools imports at its own import for converters the pipeline never calls (it converts traced torch
# modules): scikit-learn, XGBoost, libsvm, TensorFlow, Hugging Face transformers, ExecuTorch's EXIR (for EXIR
# programs) and torchao (for torchao-quantized modules): 3 of its 5 s after torch, paid by the export stage and by
# every process that reads a package. Hidden while coremltools is first imported; its converters for them then
# say the framework is missing, and the modules import as usual afterwards (scikit-learn's KMeans, coremltools'
# `kmeans` palettization mode, is imported where it runs).
UNCALLED_INTEGRATIONS = ("sklearn", "xgboost", "libsvm", "tensorflow", "transformers", "executorch", "torchao")


def coremltools():
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    hidden = [name for name in UNCALLED_INTEGRATIONS if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # None: `import name` raises ImportError
    try:
        return require("coremltools", "coreml")
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def mil_program(path: Path):
    """The package's MIL program (coremltools' own loader; works without the Core ML runtime)."""
    ct = coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.models import utils as model_utils

    model = ct.models.MLModel(str(path), skip_model_load=True)
    with quiet(logger="coremltools"):  # a tqdm bar for every graph pass on stderr
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
    with quiet(logger="coremltools"):
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
