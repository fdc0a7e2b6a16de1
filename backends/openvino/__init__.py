"""OpenVINO: the IR converted from the ONNX file, INT8 by NNCF (accuracy-controlled, timed against fp32 on this
host) and optionally INT8 weights only, run by OpenVINO's CPU plugin."""
from __future__ import annotations

from pydantic import Field

from backends.base import Backend
from pipeline.core.section import Section


class OpenVinoExportFields(Section):
    openvino: bool = Field(True, description="also convert to OpenVINO IR")
    openvino_fp16: bool = Field(False, description="store the IR's weights as fp16 (half the size)")


class OpenVinoQuantizeFields(Section):
    openvino: bool = Field(True, description="OpenVINO INT8 with nncf.quantize (needs export.openvino)")
    openvino_speed_check: bool = Field(True, description="time OpenVINO INT8 against fp32 on this host (1 "
                                       "thread, CPU time, interleaved) and mark INT8 `ship: false` when it is "
                                       "not faster")
    openvino_weights: bool = Field(False, description="also an OpenVINO variant with INT8 weights only "
                                   "(nncf.compress_weights), labelled 'int8 weights': about 4x smaller, float "
                                   "activations; faster or not depends on the CPU (bench/int8_variants.py); needs "
                                   "export.openvino")


class OpenVinoBackend(Backend):
    name = "openvino"
    runtime = "openvino"
    runtime_title = "OpenVINO"
    package = "openvino"
    suffixes = (".xml",)
    extra = "openvino"
    export_fields = OpenVinoExportFields
    quantize_fields = OpenVinoQuantizeFields
    switches = ("export.openvino", "quantize.openvino")
    export_module = "backends.openvino.export"
    quantize_module = "backends.openvino.quantize"
    runner_factory = "backends.openvino.runner:OpenVinoRunner"
    agent = "backends.openvino.agent:OpenVino"
    app_module = "backends.openvino.app"

    def app_needs(self, record: dict, settings: dict) -> str:
        return 'the OpenVINO CPU plugin (device "CPU")'

    def check_config(self, cfg) -> None:
        if cfg.quantize.openvino and not cfg.export.openvino:
            raise ValueError("quantize.openvino needs export.openvino = true (it quantizes the IR)")
        if cfg.quantize.openvino_weights and not cfg.export.openvino:
            raise ValueError("quantize.openvino_weights needs export.openvino = true (it compresses the IR's weights)")


BACKEND = OpenVinoBackend()
