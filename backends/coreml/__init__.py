"""Core ML (.mlpackage): an ML program traced from the student (normalisation baked in, class labels attached),
weights compressed by coremltools.optimize (linear INT8, k-means palettes); run by Core ML on macOS, and on Linux
by a simulation of the package's own program (backends/coreml/program.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from backends.base import Backend
from pipeline.core.section import Section

COREML_TARGETS = Literal["iOS15", "iOS16", "iOS17", "iOS18", "watchOS8", "watchOS9", "watchOS10", "watchOS11",
                         "macOS12", "macOS13", "macOS14", "macOS15"]


class CoreMLExportConfig(Section):
    enabled: bool = Field(True, description="also write model.mlpackage (Core ML ML program)")
    target: COREML_TARGETS = Field("iOS17", description="minimum deployment target (iOS17 phones, "
                                                        "watchOS10 watches)")
    precision: Literal["fp16", "fp32"] = Field("fp16", description="compute precision")
    input: Literal["image", "tensor"] = Field("image", description="an image input (grayscale/RGB pixels) "
                                                                   "or a float tensor of 0-255 pixels")
    author: str = Field("manifold-edge", description="the package's author metadata")
    license: str = Field("Apache-2.0", description="the package's license metadata")
    version: str = Field("1", description="the package's version metadata")
    parity_max_rel_diff: float = Field(3e-2, gt=0, description="max |logit diff| of the package vs torch, as a "
                                       "fraction of the largest |logit| (fp16 error scales with the values)")
    parity_min_agreement: float = Field(0.99, ge=0, le=1, description="min share of equal argmax, package vs "
                                                                      "torch")


class CoreMLVariant(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="names the file model_<name>.mlpackage")
    kind: Literal["linear", "palettize"] = Field(description="linear INT8/UINT8 weights, or a k-means palette")
    nbits: Literal[1, 2, 3, 4, 6, 8] = Field(8, description="bits per weight (palettize: 1, 2, 3, 4, 6 or 8)")
    dtype: Literal["int8", "uint8"] = Field("int8", description="linear only")
    mode: Literal["linear", "linear_symmetric", "kmeans", "uniform"] | None = Field(
        None, description="default: linear_symmetric for linear, kmeans for palettize")
    granularity: Literal["per_tensor", "per_channel", "per_grouped_channel", "per_block"] = Field(
        "per_channel", description="per_block and per_grouped_channel need iOS18")
    weight_threshold: int = Field(2048, ge=1, description="compress only weights with at least this many elements")
    op_types: list[str] = Field(default_factory=list, description="compress only these MIL op types "
                                                                  "(e.g. linear, conv); empty = all")

    @model_validator(mode="after")
    def _check(self) -> CoreMLVariant:
        if self.kind == "linear" and self.nbits != 8:
            raise ValueError(f"quantize.coreml.variants '{self.name}': linear quantization is 8-bit; "
                             f"nbits = {self.nbits} needs kind = 'palettize'")
        if self.mode and (self.mode in ("kmeans", "uniform")) != (self.kind == "palettize"):
            raise ValueError(f"quantize.coreml.variants '{self.name}': mode '{self.mode}' does not fit kind "
                             f"'{self.kind}' (linear: linear | linear_symmetric; palettize: kmeans | uniform)")
        return self


class CoreMLQuantizeConfig(Section):
    enabled: bool = Field(True, description="compressed Core ML variants (needs export.coreml)")
    variants: list[CoreMLVariant] = Field(default_factory=lambda: [
        CoreMLVariant(name="int8", kind="linear"),
        CoreMLVariant(name="palettize6", kind="palettize", nbits=6, granularity="per_tensor"),
        CoreMLVariant(name="palettize4", kind="palettize", nbits=4, granularity="per_tensor")],
        description="the compressed packages to write, one [[quantize.coreml.variants]] table each")
    w8a8: bool = Field(False, description="also quantize activations with calibration data (needs macOS)")


class ExportFields(Section):
    coreml: CoreMLExportConfig = Field(default_factory=CoreMLExportConfig)


class QuantizeFields(Section):
    coreml: CoreMLQuantizeConfig = Field(default_factory=CoreMLQuantizeConfig)


class CoreMLBackend(Backend):
    name = "coreml"
    runtime = "coreml"
    runtime_title = "Core ML"
    package = "coremltools"
    suffixes = (".mlpackage",)
    extra = "coreml"
    export_fields = ExportFields
    quantize_fields = QuantizeFields
    switches = ("export.coreml.enabled", "quantize.coreml.enabled")
    independent = True
    export_module = "backends.coreml.export"
    quantize_module = "backends.coreml.quantize"
    runner_factory = "backends.coreml.runner:coreml_runner"
    agent = "backends.coreml.agent:CoreML"
    app_module = "backends.coreml.app"
    relative_parity = True  # an fp16 program: its error scales with the logits
    simulation = ("Core ML prediction needs macOS: numbers from the package's own ML program run op by op in "
                  "torch, fp16 tensors rounded to fp16 (simulated). They reflect the package's program, compressed "
                  "weights and fp16 tensors, not Core ML's kernels or the Neural Engine; on-device numbers need a "
                  "Mac")

    def parity_bounds(self, cfg, record: dict) -> tuple[float, float]:
        return cfg.coreml.parity_max_rel_diff, cfg.coreml.parity_min_agreement

    def check_config(self, cfg) -> None:
        if cfg.quantize.coreml.enabled and not cfg.export.coreml.enabled:
            raise ValueError("quantize.coreml.enabled needs export.coreml.enabled = true (it compresses the package)")


BACKEND = CoreMLBackend()
