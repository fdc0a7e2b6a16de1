"""Core ML weight compression with coremltools.optimize.coreml: linear INT8 and k-means palettes.
Activation quantization (W8A8) calibrates by running Core ML, so it needs macOS."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import CoreMLVariant
from targets.coreml import coremltools, quiet


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
