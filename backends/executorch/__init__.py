"""ExecuTorch (.pte): the student lowered to the XNNPACK delegate, fp32 and INT8 (PT2E with the XNNPACK
quantizer, layer fallback), run by ExecuTorch's runtime."""
from __future__ import annotations

from pydantic import Field

from backends.base import Backend
from pipeline.core.section import Section


class ExecuTorchExportConfig(Section):
    enabled: bool = Field(True, description="also write model.pte: ExecuTorch, lowered to the XNNPACK delegate "
                                            "(fp32)")
    max_batch: int = Field(1, ge=1, le=4096, description="the batch the .pte is planned for: 1, one image a call as "
                                                         "an app runs it (memory for one image; static shapes let "
                                                         "XNNPACK take the slices; lowering a third sooner); above 1, "
                                                         "a dynamic batch up to it with memory planned for the "
                                                         "largest (the runner splits bigger batches); models whose "
                                                         "lowering fixes the batch (LeViT, EfficientViT) get 1")


class ExecuTorchQuantizeConfig(Section):
    enabled: bool = Field(True, description="INT8 .pte via PT2E with the XNNPACK quantizer: static, per-channel "
                                            "weights, calibrated (needs export.executorch)")
    per_channel: bool = Field(True, description="per-output-channel weight scales (else one per tensor)")


class ExportFields(Section):
    executorch: ExecuTorchExportConfig = Field(default_factory=ExecuTorchExportConfig)


class QuantizeFields(Section):
    executorch: ExecuTorchQuantizeConfig = Field(default_factory=ExecuTorchQuantizeConfig)


class ExecuTorchBackend(Backend):
    name = "executorch"
    runtime = "executorch"
    runtime_title = "ExecuTorch"
    package = "executorch"
    suffixes = (".pte",)
    extra = "executorch"
    export_fields = ExportFields
    quantize_fields = QuantizeFields
    switches = ("export.executorch.enabled",)
    export_module = "backends.executorch.export"
    quantize_module = "backends.executorch.quantize"
    runner_factory = "backends.executorch.runner:ExecuTorchRunner"
    agent = "backends.executorch.agent:ExecuTorch"
    app_module = "backends.executorch.app"
    own_process = True  # lowering: 20 of the export stage's 35 s, 28 of quantize's 40 s on the default student

    def app_needs(self, record: dict, settings: dict) -> str:
        portable = sorted(record.get("undelegated_ops") or {})
        return ("the ExecuTorch runtime with its XNNPACK backend linked (the .pte delegates to XnnpackBackend)"
                + (f" and the portable kernels of {', '.join(portable)}" if portable else ""))


BACKEND = ExecuTorchBackend()
