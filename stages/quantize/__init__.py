"""Quantize stage: INT8 variants of the exported student (ONNX Runtime static QDQ and dynamic, each with its
.ort; OpenVINO via NNCF, optionally OpenVINO with INT8 weights only; ExecuTorch via PT2E and the XNNPACK
quantizer; LiteRT full-integer and dynamic-range), each kept within `max_drop` top-1 points of fp32
where possible by leaving layers in float. OpenVINO INT8 is timed against fp32 on this host and marked
`ship: false`, with a note in the report, when it is not faster here. Each backend is a module of this package
whose `artifacts(job)` returns its records (stages/quantize/job.py); the stage imports them when it runs."""
from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from pipeline.core.errors import UserError, quote
from pipeline.core.fileio import read_json, write_json
from pipeline.core.section import Section
from pipeline.core.stage import Stage, StageContext
from stages.formats.executorch import ExecuTorchQuantizeConfig
from stages.formats.litert import LiteRTQuantizeConfig
from stages.quantize.coreml_compress import CoreMLQuantizeConfig
from stages.quantize.onnx_int8 import PREPROCESSED

log = logging.getLogger(__name__)


class QuantizeConfig(Section):
    onnx_static: bool = Field(True, description="ONNX Runtime static INT8 (QDQ, calibrated)")
    onnx_dynamic: bool = Field(True, description="ONNX Runtime dynamic INT8 (weights; activations at run time)")
    openvino: bool = Field(True, description="OpenVINO INT8 with nncf.quantize (needs export.openvino)")
    calibration_images: int = Field(512, ge=1, description="training images for calibration")
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
    openvino_speed_check: bool = Field(True, description="time OpenVINO INT8 against fp32 on this host (1 "
                                       "thread, CPU time, interleaved) and mark INT8 `ship: false` when it is "
                                       "not faster")
    openvino_weights: bool = Field(False, description="also an OpenVINO variant with INT8 weights only "
                                   "(nncf.compress_weights), labelled 'int8 weights': about 4x smaller, float "
                                   "activations; faster or not depends on the CPU (bench/int8_variants.py); needs "
                                   "export.openvino")
    op_types: list[str] = Field(["MatMul", "Gemm", "Conv"], min_length=1,
                                description="ONNX op types to quantize; LayerNorm, Softmax and GELU stay float")
    preprocess: bool = Field(True, description="ONNX Runtime's quant_pre_process before static quantization")
    max_drop: float = Field(1.0, ge=0, le=100, description="allowed top-1 drop (points) vs fp32 on "
                                                           "validation images before layers fall back to float")
    validation_images: int = Field(1000, ge=1, description="validation images for max_drop and sensitivity")
    max_fallback_layers: int = Field(8, ge=0, description="at most this many layers kept in float")
    on_over_budget: Literal["warn", "stop"] = Field("warn", description="an INT8 model still over max_drop after "
                                                    "the fallback: flag it in the report, or stop the run")
    coreml: CoreMLQuantizeConfig = Field(default_factory=CoreMLQuantizeConfig)
    executorch: ExecuTorchQuantizeConfig = Field(default_factory=ExecuTorchQuantizeConfig)
    litert: LiteRTQuantizeConfig = Field(default_factory=LiteRTQuantizeConfig)


class QuantizeStage(Stage):
    name = "quantize"
    sections = ("quantize",)
    inputs = ("data", "distill", "export")  # distill: ExecuTorch's PT2E quantizes the torch model
    uses_seed = False
    scratch = (PREPROCESSED,)

    @classmethod
    def check(cls, cfg, world_size: int) -> None:
        if cfg.quantize.onnx_static or cfg.quantize.onnx_dynamic:
            from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

            known = sorted({*IntegerOpsRegistry, *QDQRegistry, *QLinearOpsRegistry})
            unknown = [op for op in cfg.quantize.op_types if op not in known]
            if unknown:
                import difflib

                close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise UserError(f"quantize.op_types: {quote(unknown)} is not an op type ONNX Runtime quantizes "
                                f"({hint}case-sensitive ONNX names, e.g. MatMul, Gemm, Conv; the full list: "
                                "onnxruntime.quantization.registry)")

    def run(self, ctx: StageContext) -> dict:
        from stages.batches import load_dataset
        from stages.quantize import coreml_compress, executorch_int8, litert_int8, onnx_int8, openvino_int8
        from stages.quantize.job import QuantizeJob
        from targets.runtimes import artifact_bytes

        cfg: QuantizeConfig = ctx.config["quantize"]
        data = load_dataset(ctx.inputs["data"])
        n_calib = cfg.calibration_images
        if n_calib > len(data.train):
            log.warning(f"quantize.calibration_images = {n_calib} but the training split has {len(data.train)} "
                        f"images; calibrating on {len(data.train)}")
            n_calib = len(data.train)
        calibration, _ = data.train.head(n_calib)
        val_images, val_labels = data.val.head(cfg.validation_images)
        job = QuantizeJob(cfg, read_json(ctx.inputs["export"] / "export.json")["artifacts"], ctx.inputs["export"],
                          ctx.inputs["distill"], ctx.out, calibration, val_images, val_labels)
        artifacts = {}
        for backend in (onnx_int8, openvino_int8, executorch_int8, litert_int8, coreml_compress):
            artifacts.update(backend.artifacts(job))
        notes = job.notes
        over = {key: a["fallback"] for key, a in artifacts.items() if a.get("fallback") and not a["fallback"]["met"]}
        for key, fb in over.items():
            drop = fb["steps"][-1]["drop"] if "steps" in fb else fb["drop"]
            message = (f"{key} loses {drop:.2f} top-1 points on validation images, over quantize.max_drop = "
                       f"{cfg.max_drop}, even with layers kept in float")
            if cfg.on_over_budget == "stop":
                raise UserError(f"{message}: raise max_drop or max_fallback_layers, try another calibration_method, "
                                "or set quantize.on_over_budget = 'warn' to keep it flagged")
            notes.append(message)
            log.error(f"{message}: flagged in the report")
        for key, artifact in artifacts.items():
            artifact["bytes"] = artifact_bytes(ctx.out / artifact["file"])
            log.info(f"{key}: {artifact['bytes'] / 1e6:.2f} MB in {artifact['seconds']:.1f} s; INT8 op types "
                     f"{artifact['op_types']}")
        write_json(ctx.out / "quantize.json", {"artifacts": artifacts, "notes": notes})
        return {"artifacts": artifacts, "notes": notes}
