"""LiteRT (.tflite): export with litert-torch, INT8 with ai-edge-quantizer on the fp32 .tflite, both run by
XNNPACK on phone CPUs (targets/litert_runner.py).

The fp32 file takes what an Android app has, one RGB picture as float32 pixels 0-255, channels last
[1, H, W, 3], and returns logits: the grayscale conversion (BT.601 luma, PIL's convert("L"), for 1-channel data)
and the data's normalisation are inside the model (pixel_input()), as in the Core ML export, so MediaPipe's
ImageClassifier takes the file with mean 0 and std 1 in its metadata. The export writes that input's record
into the file's metadata (targets/litert_runner.APP_INPUT; ai-edge-quantizer keeps it in the INT8 files), from
which LiteRTRunner makes these pixels out of the pipeline's normalised NCHW batches. One image per call:
litert-torch cannot lower these ViTs with a dynamic batch (the patch embedding's reshape needs a concrete size).

INT8 (ai-edge-quantizer, not litert-torch's PT2E quantizer: it works on the very file that passed the parity
check, and its recipes keep chosen ops in float by their scope):
- dynamic range: INT8 weights per channel, activations quantized per call by the kernels.
- full integer: static INT8 weights (per channel) and activations (per tensor, min/max calibrated) for the
  FULLY_CONNECTED and convolution ops, which is where the work is; the float32 input and output stay, since the
  app feeds floats. The other ops (LayerNorm's pieces, softmax, GELU, the attention matmuls) stay float: with
  every op quantized, XNNPACK lacks INT8 kernels for several of them and the graph split into 44 partitions,
  2.8x slower than fp32 on the default student (x86, 1 thread); FC and conv alone stay one XNNPACK subgraph
  and ran 1.5x faster than fp32.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.core.errors import UserError
from pipeline.core.section import Section
from targets.runtimes import require

INT8_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of PIL's convert("L")
CONVERSIONS = ("QUANTIZE", "DEQUANTIZE")


class LiteRTExportConfig(Section):
    enabled: bool = Field(True, description="also write model.tflite: LiteRT (fp32), run by the XNNPACK delegate "
                                            "on phone CPUs; one image per call")


class LiteRTQuantizeConfig(Section):
    full_integer: bool = Field(True, description="LiteRT static INT8: weights and activations of the fully "
                                                 "connected and conv layers, calibrated; float32 input/output")
    dynamic_range: bool = Field(True, description="LiteRT dynamic range INT8: INT8 weights, float activations "
                                                  "quantized at run time")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """litert-torch prints progress lines to stdout, ai-edge-quantizer draws tqdm bars on stderr, and both log
    warnings through Python logging; native (absl) lines cannot be caught from Python."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def operators(path: Path) -> list[dict]:
    """The main graph's ops from the flatbuffer: builtin name, scope (its output tensor names, as
    ai-edge-quantizer's recipes match them) and whether an INT8 tensor goes in."""
    require("ai_edge_litert", "litert")
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = codes[op.OpcodeIndex()]
        outputs = [graph.Tensors(t).Name().decode() for t in op.OutputsAsNumpy() if t >= 0]
        ops.append({"op": names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())],
                    "scope": ";".join(outputs) + ";",
                    "int8_in": any(graph.Tensors(t).Type() == schema.TensorType.INT8
                                   for t in op.InputsAsNumpy() if t >= 0)})
    return ops


def op_types(path: Path) -> dict[str, int]:
    return dict(sorted(Counter(op["op"] for op in operators(path)).items()))


def int8_op_types(path: Path) -> dict[str, int]:
    """Op types that compute in INT8: an INT8 input straight in (static: quantized activations; dynamic range:
    INT8 weights the kernel uses as they are), not through a DEQUANTIZE."""
    counts = Counter(op["op"] for op in operators(path) if op["int8_in"] and op["op"] not in CONVERSIONS)
    return dict(sorted(counts.items()))


def pixel_input(model, channels: int, mean: list[float], std: list[float]):
    """`model` (normalised NCHW in) behind the app's input: RGB pixels 0-255, channels last, made grayscale with
    LUMA for 1-channel data, then normalised with the data's mean and std."""
    import torch

    class PixelInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.eval()
            self.register_buffer("luma", torch.tensor(LUMA) if channels == 1 else None)
            self.register_buffer("mean", torch.tensor(mean) * 255)
            self.register_buffer("std", torch.tensor(std) * 255)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            if self.luma is not None:
                pixels = (pixels * self.luma).sum(-1, keepdim=True)
            return self.model(((pixels - self.mean) / self.std).permute(0, 3, 1, 2))

    return PixelInput().eval()


def write_app_input(path: Path, record: dict) -> None:
    """Add `record` to the file's metadata under APP_INPUT (a flatbuffer Model.metadata entry and its buffer)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from targets.litert_runner import APP_INPUT

    model = flatbuffer_utils.read_model(str(path))
    buffer, entry = schema.BufferT(), schema.MetadataT()
    buffer.data = np.frombuffer(json.dumps(record).encode(), np.uint8)
    model.buffers.append(buffer)
    entry.name, entry.buffer = APP_INPUT, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    flatbuffer_utils.write_model(model, str(path))


def export(model, shape: tuple[int, ...], path: Path, mean: list[float] | None = None,
           std: list[float] | None = None) -> dict:
    """The fp32 .tflite of `model` for one image of `shape` (C, H, W): with the data's `mean` and `std`, taking
    app pixels (pixel_input(), its record in the file); without, the model's own input. An op litert-torch
    cannot lower is a UserError naming it."""
    import torch

    channels, size = shape[0], shape[1:]
    app = None if mean is None else {"layout": "NHWC", "color": "RGB", "pixel_range": [0, 255], "channels": channels,
                                     "mean": list(mean), "std": list(std)}
    with quiet():
        litert_torch = require("litert_torch", "litert")
        try:
            converted = litert_torch.convert(model.eval(), (torch.zeros(1, *shape),)) if app is None else \
                litert_torch.convert(pixel_input(model, channels, mean, std), (torch.zeros(1, *size, 3),))
        except Exception as exc:  # litert-torch raises many types; the innermost names the op
            from pipeline.core.errors import root_cause

            raise UserError(f"LiteRT conversion failed: {root_cause(exc)}; try a model without this "
                            "operator") from None
        converted.export(str(path))
    if app is None:
        return {"input_shape": [1, *shape], "op_types": op_types(path)}
    write_app_input(path, app)
    return {"input_shape": [1, *size, 3], "app_input": app, "op_types": op_types(path)}


def _quantizer(src: Path):
    require("ai_edge_quantizer", "litert")
    from ai_edge_quantizer import quantizer

    return quantizer.Quantizer(str(src))


def quantize_dynamic(src: Path, dst: Path) -> dict:
    """ai-edge-quantizer's dynamic_wi8_afp32 recipe: INT8 per-channel weights for every op that takes them."""
    q = _quantizer(src)
    from ai_edge_quantizer import recipe

    q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    with quiet():
        Path(dst).write_bytes(q.quantize(enable_progress_report=False).quantized_model)
    return {"op_types": int8_op_types(dst)}


def layer_name(scope: str) -> str:
    """A readable name for an op scope: its last tensor name without module paths or output numbers."""
    last = [name for name in scope.split(";") if name and not name.isdigit()][-1]
    return "/".join(part.rsplit(".", 1)[-1] for part in last.split("/"))


def _scope(scope: str) -> str:
    return f"^{re.escape(scope)}$"


def _static_recipe(src: Path, only: str | None = None, exclude: list[str] = ()):
    """Static W8A8 for the INT8_OPS (or for the one op at scope `only`) with `exclude` in float. The recipe
    names no INPUT/OUTPUT op, so the model's float32 input and output stay."""
    q = _quantizer(src)
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    for op in INT8_OPS:
        q.add_static_config(_scope(only) if only else ".*", op, activation_num_bits=8, weight_num_bits=8)
    for scope in exclude:
        q.update_quantization_recipe(_scope(scope), "*", algorithm_key=AlgorithmName.NO_QUANTIZE)
    return q


def calibrate(src: Path, images: np.ndarray) -> dict:
    """Min/max of every tensor the static recipe quantizes, over `images` (normalised NCHW, fed as the file
    takes them) one by one on one thread (so the ranges depend only on the images)."""
    from targets.litert_runner import LiteRTRunner

    runner = LiteRTRunner(src)
    signatures = runner.interpreter.get_signature_list()
    key = next(iter(signatures))
    name, inputs = signatures[key]["inputs"][0], runner.feed(images)
    with quiet():
        return _static_recipe(src).calibrate({key: [{name: inputs[i:i + 1]} for i in range(len(inputs))]},
                                             num_threads=1)


def quantize_static(src: Path, dst: Path, ranges: dict, only: str | None = None, exclude: list[str] = ()) -> None:
    q = _static_recipe(src, only, exclude)
    with quiet():
        Path(dst).write_bytes(q.quantize(ranges, enable_progress_report=False).quantized_model)


def top1(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    from targets.litert_runner import LiteRTRunner

    return float(100 * (LiteRTRunner(path)(images).argmax(1) == labels).mean())


def rank_sensitivity(src: Path, probe: Path, ranges: dict, images: np.ndarray, reference: np.ndarray
                     ) -> list[dict]:
    """Quantize one layer alone and measure how far the logits move from fp32 (mean squared error relative
    to the fp32 logits' variance). Most harmful first."""
    from targets.litert_runner import LiteRTRunner

    scores = []
    for op in operators(src):
        if op["op"] in INT8_OPS:
            quantize_static(src, probe, ranges, only=op["scope"])
            logits = LiteRTRunner(probe)(images)
            scores.append({"node": op["scope"], "relative_mse": float(((logits - reference) ** 2).mean()
                                                                      / reference.var())})
    probe.unlink(missing_ok=True)
    return sorted(scores, key=lambda s: -s["relative_mse"])


def quantize_full_integer(src: Path, dst: Path, calibration: np.ndarray, val_images: np.ndarray,
                          val_labels: np.ndarray, max_drop: float, max_fallback_layers: int) -> dict:
    """Static INT8 of every FC/conv layer; while the top-1 drop against the fp32 .tflite exceeds max_drop,
    keep the next most sensitive layer in float (at most max_fallback_layers; sensitivity ranked once, on at
    most 256 validation images). Calibrated once, the ranges reused by every step.
    Returns stages.quantize.fallback.Fallback's dict plus the op types that compute in INT8."""
    from stages.quantize.fallback import with_fallback
    from targets.litert_runner import LiteRTRunner

    src, dst = Path(src), Path(dst)
    ranges = calibrate(src, calibration)

    def quantized_top1(excluded: list[str]) -> float:
        quantize_static(src, dst, ranges, exclude=excluded)
        return top1(dst, val_images, val_labels)

    def rank() -> list[dict]:
        reference = LiteRTRunner(src)(val_images[:256])
        return rank_sensitivity(src, dst.with_name(f"{dst.stem}_probe.tflite"), ranges, val_images[:256], reference)

    result = with_fallback("LiteRT static INT8", top1(src, val_images, val_labels), max_drop, max_fallback_layers,
                           quantized_top1, rank, layer_name)
    return {**result.as_dict(), "op_types": int8_op_types(dst)}
