"""ONNX (torch.onnx's dynamo exporter) with its ONNX Runtime Mobile `.ort` siblings, INT8 by ONNX Runtime's
quantizer (static QDQ with layer fallback, and dynamic), run by ONNX Runtime. Every other format's parity and
the predicted latency start from this backend's fp32 file, so it cannot be turned off."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from backends.base import Backend
from pipeline.core.section import Section


class OrtMobileConfig(Section):
    enabled: bool = Field(True, description="also write the .ort mobile format of each ONNX model (fp32 and INT8) "
                                            "and ORT's NNAPI / Core ML execution-provider coverage of the graph")
    target_platform: str = Field("arm", pattern="^(arm|amd64)$", description="the CPU the .ort is optimised for "
                                 "(arm: phones and watches; INT8 QDQ kept as INT8 kernels there)")


class OnnxExportFields(Section):
    opset: int = Field(20, ge=17, le=22, description="ONNX opset (17 has LayerNormalization; 23 fuses "
                                                     "attention, which quantizers do not take yet)")
    ort_mobile: OrtMobileConfig = Field(default_factory=OrtMobileConfig)


class OnnxQuantizeFields(Section):
    onnx_static: bool = Field(True, description="ONNX Runtime static INT8 (QDQ, calibrated)")
    onnx_dynamic: bool = Field(True, description="ONNX Runtime dynamic INT8 (weights; activations at run time)")
    calibration_method: Literal["MinMax", "Entropy", "Percentile"] = Field(
        "MinMax", description="ONNX static: how activation ranges are found on the calibration images")
    per_channel: bool = Field(True, description="per-channel weight scales (ONNX static)")
    static_attention_float: bool = Field(True, description="ONNX static: keep the attention matmuls (Q K^T, "
                                         "softmax x V) and so the Softmax in float; quantizing them forces an "
                                         "INT8 softmax that costs more than it saves (bench/int8_variants.py)")
    dynamic_per_channel: bool = Field(True, description="ONNX dynamic: per-channel weight scales")
    reduce_range: Literal["auto", "on", "off"] = Field(
        "auto", description="ONNX and OpenVINO INT8 with 7-bit weights (OpenVINO: NNCF's overflow fix on every "
                            "layer, not only the first); auto = on for x86 CPUs without VNNI (ONNX Runtime's and "
                            "NNCF's advice there: AVX2 INT8 sums can saturate), off elsewhere")
    op_types: list[str] = Field(["MatMul", "Gemm", "Conv"], min_length=1,
                                description="ONNX op types to quantize; LayerNorm, Softmax and GELU stay float")
    preprocess: bool = Field(True, description="ONNX Runtime's quant_pre_process before static quantization")


class OnnxBackend(Backend):
    name = "onnx"
    runtime = "onnxruntime"
    runtime_title = "ONNX Runtime"
    package = "onnxruntime"
    suffixes = (".onnx", ".ort")
    extra = "onnx"
    export_fields = OnnxExportFields
    quantize_fields = OnnxQuantizeFields
    export_module = "backends.onnx.export"
    quantize_module = "backends.onnx.quantize"
    runner_factory = "backends.onnx.runner:OnnxRuntimeRunner"
    agent = "backends.onnx.agent:OnnxRuntime"
    app_module = "backends.onnx.app"
    scratch = ("model_preprocessed.onnx",)

    def app_needs(self, record: dict, settings: dict) -> str:
        return (f"the {settings.get('execution_provider') or 'CPUExecutionProvider'} (CPU execution provider)")

    def check(self, cfg, world_size: int) -> None:
        from backends.onnx.quantize import check_op_types

        if cfg.quantize.onnx_static or cfg.quantize.onnx_dynamic:
            check_op_types(cfg.quantize.op_types)


BACKEND = OnnxBackend()
