"""Core ML weight compression with coremltools.optimize.coreml: linear INT8 and k-means palettes.
Activation quantization (W8A8) calibrates by running Core ML, so it needs macOS."""
from __future__ import annotations

import time
from pathlib import Path

from pipeline.config import CoreMLVariant
from stages.quantize.job import QuantizeJob
from targets.coreml import IS_MACOS, coremltools, inspect_package, quiet
from targets.numerics import weights_only

NEEDS_MACOS_W8A8 = ("activation quantization calibrates by running the model in Core ML, which needs macOS; "
                    "skipped (weights-only variants are above)")


def compress(src: Path, dst: Path, variant: CoreMLVariant) -> None:
    ct = coremltools()
    import coremltools.optimize.coreml as cto

    if variant.kind == "linear":
        op_config = cto.OpLinearQuantizerConfig(mode=variant.mode or "linear_symmetric", dtype=variant.dtype,
                                                granularity=variant.granularity,
                                                weight_threshold=variant.weight_threshold)
    else:
        op_config = cto.OpPalettizerConfig(mode=variant.mode or "kmeans", nbits=variant.nbits,
                                           granularity=variant.granularity,
                                           weight_threshold=variant.weight_threshold)
    config = cto.OptimizationConfig(op_type_configs={op: op_config for op in variant.op_types}) \
        if variant.op_types else cto.OptimizationConfig(global_config=op_config)
    model = ct.models.MLModel(str(src), skip_model_load=True)
    fn = cto.linear_quantize_weights if variant.kind == "linear" else cto.palettize_weights
    with quiet():
        fn(model, config).save(str(dst))


def artifacts(job: QuantizeJob) -> dict[str, dict]:
    """Each of quantize.coreml.variants (INT8 weights, palettes) of the exported package, with its checks."""
    coreml, found = job.cfg.coreml, {}
    if not coreml.enabled:
        return found
    package = job.export_dir / job.exported["coreml"]["file"]
    target = job.exported["coreml"]["package"]["target"]
    for variant in coreml.variants:
        start = time.perf_counter()
        file = job.out / f"model_{variant.name}.mlpackage"
        compress(package, file, variant)
        checks = inspect_package(file, target)
        precision = f"int8 weights ({variant.granularity})" if variant.kind == "linear" \
            else f"{variant.nbits}-bit palette"
        weights = "int8" if variant.kind == "linear" else f"palette{variant.nbits}"
        found[f"coreml_{variant.name}"] = {
            "file": file.name, "runtime": "coreml", "precision": precision,
            "numerics": weights_only(weights, job.exported["coreml"]["numerics"]["activations"]),
            "variant": variant.model_dump(),
            "package": checks, "op_types": checks["compressed_weights"],
            "seconds": round(time.perf_counter() - start, 2)}
    if coreml.w8a8:
        job.note(f"Core ML W8A8 was asked for but {NEEDS_MACOS_W8A8}" if not IS_MACOS else
                 "Core ML W8A8 is not implemented yet on macOS either")
    return found
