"""LiteRT (.tflite): the student converted by litert-torch (pixels in, normalisation inside), INT8 by
ai-edge-quantizer (full-integer with layer fallback, and dynamic-range), run by LiteRT's XNNPACK delegate."""
from __future__ import annotations

from pydantic import Field

from backends.base import Backend
from pipeline.core.section import Section


class LiteRTExportConfig(Section):
    enabled: bool = Field(True, description="also write model.tflite: LiteRT (fp32), run by the XNNPACK delegate "
                                            "on phone CPUs; one image per call")


class LiteRTQuantizeConfig(Section):
    full_integer: bool = Field(True, description="LiteRT static INT8: weights and activations of the fully "
                                                 "connected and conv layers, calibrated; float32 input/output")
    dynamic_range: bool = Field(True, description="LiteRT dynamic range INT8: INT8 weights, float activations "
                                                  "quantized at run time")


class ExportFields(Section):
    litert: LiteRTExportConfig = Field(default_factory=LiteRTExportConfig)


class QuantizeFields(Section):
    litert: LiteRTQuantizeConfig = Field(default_factory=LiteRTQuantizeConfig)


class LiteRTBackend(Backend):
    name = "litert"
    runtime = "litert"
    runtime_title = "LiteRT"
    package = "ai-edge-litert"
    suffixes = (".tflite",)
    extra = "litert"
    export_fields = ExportFields
    quantize_fields = QuantizeFields
    switches = ("export.litert.enabled",)
    independent = True
    export_module = "backends.litert.export"
    quantize_module = "backends.litert.quantize"
    runner_factory = "backends.litert.runner:LiteRTRunner"
    agent = "backends.litert.agent:LiteRT"
    app_module = "backends.litert.app"

    def app_needs(self, record: dict, settings: dict) -> str:
        return "the XNNPACK delegate (LiteRT's default on CPU): CPU"


BACKEND = LiteRTBackend()
