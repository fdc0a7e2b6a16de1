"""Core ML weight compression with coremltools.optimize.coreml: linear INT8 and k-means palettes.
Activation quantization (W8A8) calibrates by running Core ML, so it needs macOS."""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from backends.base import QuantizeJob
from backends.coreml import CoreMLVariant
from backends.coreml.package import coremltools, inspect_package
from backends.coreml.runner import IS_MACOS
from pipeline.core.logs import quiet
from pipeline.core.numerics import weights_only

NEEDS_MACOS_W8A8 = ("activation quantization calibrates by running the model in Core ML, which needs macOS; "
                    "skipped (weights-only variants are above)")


def kmeans_palette(weight, nbits: int):
    """A palette of 2**nbits entries for `weight` by 1-D k-means, and each element's index into it (its
    nearest entry, after the palette is rounded to the weight's dtype). Deterministic: the same weights give
    the same palette on every host. coremltools' own kmeans mode (scikit-learn KMeans) does not: its result
    follows OpenBLAS's CPU kernel and the thread count (a random ResNet's 4-bit palette kept the argmax of
    25 of 32 images with the Haswell kernel, 29 with Prescott's; 1 and 2 threads gave other weights).
    Weighted Lloyd iterations on the sorted distinct values (clusters are intervals, so a step is prefix
    sums and a binary search; no BLAS, no threads) from two starts, equal-count intervals and k-means++
    with a fixed seed; the lower squared error wins."""
    import numpy as np

    values, inverse, counts = np.unique(weight.reshape(-1), return_inverse=True, return_counts=True)
    v = values.astype(np.float64)
    k = min(1 << nbits, len(v))
    n_sum, v_sum, sq_sum = (np.concatenate([[0], np.cumsum(x)]) for x in (counts, v * counts, v * v * counts))

    def lloyd(centroids):
        edges = None
        for _ in range(10_000):  # a bound only: each change of the intervals lowers the error
            new = np.concatenate([[0], np.searchsorted(v, (centroids[:-1] + centroids[1:]) / 2), [len(v)]])
            if edges is not None and np.array_equal(new, edges):
                break
            edges = new
            n, s = n_sum[edges[1:]] - n_sum[edges[:-1]], v_sum[edges[1:]] - v_sum[edges[:-1]]
            centroids = np.where(n > 0, s / np.maximum(n, 1), centroids)  # an empty interval keeps its centre
        error = (sq_sum[edges[1:]] - sq_sum[edges[:-1]] - s * s / np.maximum(n, 1)).sum()
        return error, centroids

    step = np.arange(k + 1)
    edges = np.maximum.accumulate(np.searchsorted(n_sum, step * n_sum[-1] / k) - step) + step  # increasing,
    edges = np.minimum(edges, len(v) - k + step)  # so no interval is empty, and within the values
    equal_count = (v_sum[edges[1:]] - v_sum[edges[:-1]]) / (n_sum[edges[1:]] - n_sum[edges[:-1]])
    rng = np.random.default_rng(0)
    picks = [int(np.searchsorted(n_sum[1:], rng.random() * n_sum[-1], side="right"))]
    distance = (v - v[picks[0]]) ** 2
    for _ in range(k - 1):  # k-means++: the next centre with probability proportional to squared distance
        cumulative = np.cumsum(counts * distance)
        picks.append(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")))
        np.minimum(distance, (v - v[picks[-1]]) ** 2, out=distance)
    _, centroids = min(lloyd(equal_count), lloyd(np.sort(v[picks])), key=lambda result: result[0])
    lut = np.zeros(1 << nbits, weight.dtype)
    lut[:k] = centroids
    rounded = lut[:k].astype(np.float64)
    nearest = np.searchsorted((rounded[:-1] + rounded[1:]) / 2, v)
    return lut, nearest[inverse.reshape(-1)].astype(np.uint8)


def compress(src: Path, dst: Path, variant: CoreMLVariant) -> None:
    ct = coremltools()
    import coremltools.optimize.coreml as cto

    if variant.kind == "linear":
        op_config = cto.OpLinearQuantizerConfig(mode=variant.mode or "linear_symmetric", dtype=variant.dtype,
                                                granularity=variant.granularity,
                                                weight_threshold=variant.weight_threshold)
    elif (variant.mode or "kmeans") == "kmeans":  # our k-means, through coremltools' custom palette hook
        op_config = cto.OpPalettizerConfig(mode="custom", lut_function=partial(kmeans_palette, nbits=variant.nbits),
                                           granularity=variant.granularity,
                                           weight_threshold=variant.weight_threshold)
    else:
        op_config = cto.OpPalettizerConfig(mode=variant.mode, nbits=variant.nbits, granularity=variant.granularity,
                                           weight_threshold=variant.weight_threshold)
    config = cto.OptimizationConfig(op_type_configs={op: op_config for op in variant.op_types}) \
        if variant.op_types else cto.OptimizationConfig(global_config=op_config)
    model = ct.models.MLModel(str(src), skip_model_load=True)
    fn = cto.linear_quantize_weights if variant.kind == "linear" else cto.palettize_weights
    with quiet(logger="coremltools"):  # a tqdm bar for every graph pass on stderr
        fn(model, config).save(str(dst))


def run(job: QuantizeJob) -> dict[str, dict]:
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
