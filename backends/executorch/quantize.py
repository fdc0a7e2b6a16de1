"""ExecuTorch INT8: the torch student quantized by PT2E with the XNNPACK quantizer (static, per-channel weights,
calibrated) and lowered as the fp32 program is (backends/executorch/export.py), with the layer fallback that keeps
the most sensitive Linear/Conv layers in float until `max_drop` is met.

The fallback judges its steps on the fake-quantized torch graph (convert_pt2e's module: the program's quantize
and dequantize ops, run by torch) and lowers one program, at the end, judged as a last step
(backends.fallback.with_fallback's `final`): lowering took 28 of the stage's 40 s per step on the default
student. The stand-in tracks the program: on the default student the two agree on 999 of the 1000 validation
images (top-1 89.5% vs 89.4%; logits within 0.17), and the tests' models hold their drops within an image
(tests/test_executorch.py); where the program is over budget though the stand-in was not, the loop goes on
lowering each step."""
from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from backends.base import QuantizeJob, predict, require
from backends.executorch.export import _capture, _capture_and_lower, _failed, _one_image_at_a_time, _unfused
from backends.fallback import with_fallback
from pipeline.core.errors import skippable
from pipeline.core.logs import quiet
from pipeline.core.numerics import static_int8

PROBE_IMAGES = 256  # validation images for the sensitivity ranking
CALIBRATION_BATCH = 32


@functools.cache
def _ptq_quantizer():
    """XNNPACKQuantizer without its conv + batch-norm patterns, which are for QAT: prepare_pt2e folds batch
    norm into the conv before annotating, so they match nothing here, yet tracing them took 98% of
    prepare_pt2e (3.4 s per call on the test model)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class PTQQuantizer(XNNPACKQuantizer):
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]

    return PTQQuantizer


def _quantizer(per_channel: bool, keep: Callable | None = None):
    """The XNNPACK quantizer (static INT8, symmetric weights) on the nodes where `keep(node)` is true."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    quantizer = _ptq_quantizer()().set_global(get_symmetric_quantization_config(is_per_channel=per_channel,
                                                                                  is_dynamic=False))
    if keep is not None:
        quantizer.set_filter_function(keep)
    return quantizer


def _in_modules(names: list[str], inside: bool = True) -> Callable:
    """A node filter: true for nodes in (inside=False: outside) the named modules."""
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    filters = [get_module_name_filter(name) for name in names]
    return lambda node: any(f(node) for f in filters) == inside


def _fake_quantized(graph, calibration: np.ndarray, quantizer, batch: int):
    """prepare_pt2e, observe `calibration` in order (deterministic min/max), convert_pt2e: a torch module
    with quantize/dequantize ops, numerically what the INT8 program computes."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(copy.deepcopy(graph), quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), batch):
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[i:i + batch], dtype=np.float32)))
    with _no_qat_folding():
        return convert_pt2e(prepared)


@contextlib.contextmanager
def _no_qat_folding() -> Iterator[None]:
    """convert_pt2e folds quantization-aware-training conv + batch-norm patterns whenever a batch norm is left in
    the graph (one no conv precedes, such as EfficientViT's head), tracing about 90 pattern graphs per call: 21 of
    25 s of each convert on the zoo's EfficientViT-M0, for patterns post-training quantization never makes (the
    same module comes out; tests/test_executorch.py). Skipped while the block runs (torchao 0.18)."""
    from torchao.quantization.pt2e import quantize_pt2e

    fold = quantize_pt2e._fold_conv_bn_qat
    quantize_pt2e._fold_conv_bn_qat = lambda model: model
    try:
        yield
    finally:
        quantize_pt2e._fold_conv_bn_qat = fold


def _logits(module, images: np.ndarray, batch: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(np.ascontiguousarray(images[i:i + batch], dtype=np.float32)))
                               .numpy() for i in range(0, len(images), batch)])


def candidate_modules(model) -> list[str]:
    """The layers the fallback may keep in float: every Linear and Conv (where the INT8 work is)."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def rank_sensitivity(model, graph, calibration: np.ndarray, images: np.ndarray, reference: np.ndarray,
                     per_channel: bool, batch: int) -> list[dict]:
    """Quantize one layer alone (fake-quantized in torch, not lowered: lowering takes seconds) and measure
    how far the logits move from fp32, relative to their variance. Most harmful first."""
    scores = []
    for name in candidate_modules(model):
        probe = _fake_quantized(graph, calibration, _quantizer(per_channel, _in_modules([name])), batch)
        logits = _logits(probe, images, batch)
        scores.append({"node": name, "relative_mse": float(((logits - reference) ** 2).mean() / reference.var())})
    return sorted(scores, key=lambda s: -s["relative_mse"])


def _torch_graph(model, shape: tuple[int, ...], max_batch: int):
    """The graph PT2E prepares and calibrates, and the fallback ranks layers on (torch work), and its batch:
    batches of CALIBRATION_BATCH also where the program takes one image at a time because its lowering fixes the
    batch (LeViT, EfficientViT: torch.export keeps it dynamic); the program's batch where torch.export cannot."""
    try:
        return _capture(model, shape, max(max_batch, CALIBRATION_BATCH)).module(), CALIBRATION_BATCH
    except Exception:
        if max_batch >= CALIBRATION_BATCH:
            raise
        return _capture(model, shape, max_batch).module(), max_batch


def quantize(model, shape: tuple[int, ...], dst: Path, calibration: np.ndarray, val_images: np.ndarray,
             val_labels: np.ndarray, max_drop: float, max_fallback_layers: int, per_channel: bool,
             max_batch: int = 64, name: str = "the model", max_fallback_seconds: float | None = None) -> dict:
    """INT8 .pte (static: weights and activations, calibrated on `calibration`), then while the INT8
    program's top-1 on the validation images is more than `max_drop` points below fp32 torch's, the next
    most sensitive layer stays float (at most `max_fallback_layers`, for at most `max_fallback_seconds`): judged
    on the fake-quantized graph, the program lowered once at the end (the module docstring).

    Returns backends.fallback.Fallback's dict plus `op_types` (ops XNNPACK runs on INT8 data) and
    the delegation record of the last program."""
    from backends.executorch.runner import ExecuTorchRunner

    require("executorch", "executorch")
    require("torchao", "executorch")
    model = _unfused(model)
    try:
        with quiet():
            graph, batch = _torch_graph(model, shape, max_batch)
    except Exception as exc:
        raise _failed("INT8 capture", name, exc) from None
    lowered: dict = {}  # the delegation record of the last program written
    converted: dict[tuple[str, ...], object] = {}  # the fake-quantized graph of the last step

    def stand_in(excluded: list[str]) -> np.ndarray:
        converted.clear()
        with quiet():
            converted[tuple(excluded)] = module = _fake_quantized(
                graph, calibration, _quantizer(per_channel, _in_modules(excluded, False)), batch)
        return _logits(module, val_images, batch).argmax(1)

    def program(excluded: list[str]) -> np.ndarray:
        if tuple(excluded) not in converted:
            stand_in(excluded)
        with quiet():
            try:
                # lowering again (a step after the program was over budget): at the batch the first could keep
                record, lowered["max_batch"] = _capture_and_lower(converted[tuple(excluded)], shape, dst,
                                                                  lowered.get("max_batch", max_batch), int8=True)
                lowered.update(record)
            except Exception as exc:
                raise _failed("INT8 lowering", name, exc) from None
        return predict(ExecuTorchRunner(dst), [val_images]).argmax(1)

    def rank() -> list[dict]:
        images = val_images[:PROBE_IMAGES]
        with quiet():
            return rank_sensitivity(model, graph, calibration, images, _logits(model, images, batch), per_channel,
                                    batch)

    result = with_fallback("ExecuTorch INT8", _logits(model, val_images, batch).argmax(1), val_labels, max_drop,
                           max_fallback_layers, len(candidate_modules(model)), stand_in, rank, final=program,
                           max_seconds=max_fallback_seconds)
    _one_image_at_a_time(name, max_batch, lowered["max_batch"])
    return {**result.as_dict(), "op_types": lowered.pop("int8_ops"), **lowered}


def run(job: QuantizeJob) -> dict[str, dict]:
    """model_int8.pte from the torch student (when quantize.executorch.enabled and the fp32 .pte was exported)."""
    cfg = job.cfg
    if not (cfg.executorch.enabled and "executorch" in job.exported):
        return {}
    start = time.perf_counter()
    file = job.out / "model_int8.pte"
    model, record = job.load_model()
    with skippable("quantize.executorch.enabled"):
        fallback = quantize(model, tuple(job.calibration.shape[1:]), file, job.calibration, job.val_images,
                            job.val_labels, cfg.max_drop, cfg.max_fallback_layers, cfg.executorch.per_channel,
                            max_batch=job.exported["executorch"]["max_batch"], name=record["model"],
                            max_fallback_seconds=cfg.max_fallback_seconds or None)
    return {"executorch_int8": {
        "file": file.name, "runtime": "executorch", "precision": "int8 static (XNNPACK quantizer" +
        (", per-channel)" if cfg.executorch.per_channel else ")"), "numerics": static_int8(),
        "op_types": fallback.pop("op_types"),
        "fallback": fallback,
        "calibration": {"images": job.calibration_images, "per_channel": cfg.executorch.per_channel},
        "seconds": round(time.perf_counter() - start, 2)}}
