"""Quantize stage: INT8 variants of the exported student (ONNX Runtime static QDQ and dynamic, each with its
.ort; OpenVINO via NNCF, optionally OpenVINO with INT8 weights only; ExecuTorch via PT2E and the XNNPACK
quantizer; LiteRT full-integer and dynamic-range), each kept within `max_drop` top-1 points of fp32
where possible by leaving layers in float. OpenVINO INT8 is timed against fp32 on this host and marked
`ship: false`, with a note in the report, when it is not faster here."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.config import QuantizeConfig
from pipeline.errors import UserError
from pipeline.fileio import read_json, write_json
from pipeline.stage import Stage, StageContext
from stages.batches import load_dataset
from stages.formats import executorch as executorch_format
from stages.formats import litert as litert_format
from stages.formats import ort_mobile
from stages.models import load_model
from stages.quantize import coreml_compress, onnx_int8, openvino_int8
from targets.coreml import IS_MACOS, inspect_package
from targets.diagnosis import int8_instructions
from targets.runtimes import artifact_bytes, load_runner, predict

PREPROCESSED = "model_preprocessed.onnx"
NEEDS_MACOS_W8A8 = ("activation quantization calibrates by running the model in Core ML, which needs macOS; "
                    "skipped (weights-only variants are above)")


def parity_of(reference_runner, runner, images: np.ndarray) -> dict:
    """Max |logit diff| and argmax agreement of `runner` against `reference_runner` on `images`."""
    a, b = predict(reference_runner, [images]), predict(runner, [images])
    return {"max_abs_diff": float(np.abs(a - b).max()), "argmax_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "images": len(images), "against": "its .onnx"}


class QuantizeStage(Stage):
    name = "quantize"
    sections = ("quantize",)
    inputs = ("data", "distill", "export")  # distill: ExecuTorch's PT2E quantizes the torch model
    uses_seed = False
    scratch = (PREPROCESSED,)

    def run(self, ctx: StageContext) -> dict:
        cfg: QuantizeConfig = ctx.config["quantize"]
        data = load_dataset(ctx.inputs["data"])
        exported = read_json(ctx.inputs["export"] / "export.json")["artifacts"]
        n_calib = cfg.calibration_images
        if n_calib > len(data.train):
            ctx.progress.log(f"[yellow]  warning: quantize.calibration_images = {n_calib} but the training split has "
                             f"{len(data.train)} images; calibrating on {len(data.train)}[/]")
            n_calib = len(data.train)
        calibration, _ = data.train.head(n_calib)
        val_images, val_labels = data.val.head(cfg.validation_images)
        onnx_src = ctx.inputs["export"] / exported["onnx"]["file"]
        artifacts, notes = {}, []

        if cfg.onnx_static or cfg.onnx_dynamic:
            start = time.perf_counter()
            source = onnx_src
            if cfg.preprocess:
                onnx_int8.preprocess(onnx_src, ctx.out / PREPROCESSED)
                source = ctx.out / PREPROCESSED
            prep_s = time.perf_counter() - start
        if cfg.onnx_static or cfg.onnx_dynamic:
            host = int8_instructions()
            settings = {"reduce_range": onnx_int8.reduce_range(cfg, host), "reduce_range_setting": cfg.reduce_range,
                        "host_int8_dot": host["int8_dot"], "host_machine": host["machine"]}
        if cfg.onnx_static:
            start = time.perf_counter()
            file = ctx.out / "model_int8_static.onnx"
            fallback = onnx_int8.static_with_fallback(source, file, ctx.out, calibration, val_images, val_labels,
                                                      cfg, ctx.progress.log)
            attention = onnx_int8.static_exclusions(source, cfg)
            artifacts["onnx_int8_static"] = {
                "file": file.name, "runtime": "onnxruntime",
                "precision": "int8 static QDQ" + (", attention float" if attention else ""),
                "op_types": onnx_int8.quantized_op_types(file), "fallback": fallback.as_dict(),
                "calibration": {"images": n_calib, "method": cfg.calibration_method, "per_channel": cfg.per_channel},
                **settings, "float_attention_matmuls": attention,
                "seconds": round(time.perf_counter() - start + prep_s, 2)}
        if cfg.onnx_dynamic:
            start = time.perf_counter()
            file = ctx.out / "model_int8_dynamic.onnx"
            onnx_int8.quantize_dynamic(source, file, cfg)
            artifacts["onnx_int8_dynamic"] = {
                "file": file.name, "runtime": "onnxruntime",
                "precision": "int8 dynamic" + (", per-channel" if cfg.dynamic_per_channel else ""),
                "op_types": onnx_int8.quantized_op_types(file), "per_channel": cfg.dynamic_per_channel, **settings,
                "seconds": round(time.perf_counter() - start, 2)}
        mobile = exported["onnx"].get("mobile")
        for key in ("onnx_int8_static", "onnx_int8_dynamic"):
            if mobile and key in artifacts:  # the export wrote an .ort: so do its INT8 variants
                artifacts[key]["mobile"] = self._mobile(ctx.out / artifacts[key]["file"], ctx.out,
                                                        mobile["target_platform"], val_images[:256])
        if cfg.openvino:
            start = time.perf_counter()
            file = ctx.out / "openvino_int8_model.xml"
            control = openvino_int8.quantize(ctx.inputs["export"] / exported["openvino"]["file"], file, calibration,
                                             val_images, val_labels, cfg, ctx.progress.log)
            artifacts["openvino_int8"] = {
                "file": file.name, "runtime": "openvino", "precision": "int8 (NNCF)",
                "op_types": openvino_int8.quantized_op_types(file), "fallback": control,
                "seconds": round(time.perf_counter() - start, 2)}
            if cfg.openvino_speed_check:
                fp32 = ctx.inputs["export"] / exported["openvino"]["file"]
                check = openvino_int8.speed_check(fp32, file, calibration[0])
                artifacts["openvino_int8"].update(host_speed=check, ship=check["ship"])
                s = check["speedup"]
                if not check["ship"]:
                    notes.append(f"`openvino_int8` is not faster than OpenVINO fp32 on this host ({s['x']:.2f}x, "
                                 f"95% interval {s['interval'][0]:.2f}-{s['interval'][1]:.2f}, 1 thread, CPU time): "
                                 "written but marked ship: false; the ship table still goes by each target's "
                                 "measured latency")
                    ctx.progress.log(f"[yellow]  {notes[-1]}[/]")
        if cfg.openvino_weights:
            start = time.perf_counter()
            file = ctx.out / "openvino_int8_weights_model.xml"
            openvino_int8.compress_weights(ctx.inputs["export"] / exported["openvino"]["file"], file)
            artifacts["openvino_int8_weights"] = {
                "file": file.name, "runtime": "openvino", "precision": "int8 weights",
                "op_types": openvino_int8.compressed_weights(file), "seconds": round(time.perf_counter() - start, 2)}
        if cfg.executorch.enabled and "executorch" in exported:
            start = time.perf_counter()
            file = ctx.out / "model_int8.pte"
            model, record = load_model(ctx.inputs["distill"] / "model.pt")
            fallback = executorch_format.quantize(model, tuple(calibration.shape[1:]), file, calibration, val_images,
                                                  val_labels, cfg.max_drop, cfg.max_fallback_layers,
                                                  cfg.executorch.per_channel, ctx.progress.log,
                                                  max_batch=exported["executorch"]["max_batch"], name=record["model"])
            artifacts["executorch_int8"] = {
                "file": file.name, "runtime": "executorch", "precision": "int8 static (XNNPACK quantizer" +
                (", per-channel)" if cfg.executorch.per_channel else ")"), "op_types": fallback.pop("op_types"),
                "fallback": fallback, "calibration": {"images": n_calib, "per_channel": cfg.executorch.per_channel},
                "seconds": round(time.perf_counter() - start, 2)}
        if "litert" in exported:
            source = ctx.inputs["export"] / exported["litert"]["file"]
            if cfg.litert.full_integer:
                start = time.perf_counter()
                file = ctx.out / "model_int8.tflite"
                fallback = litert_format.quantize_full_integer(source, file, calibration, val_images, val_labels,
                                                               cfg.max_drop, cfg.max_fallback_layers, ctx.progress.log)
                artifacts["litert_int8"] = {
                    "file": file.name, "runtime": "litert", "precision": "int8 static, FC/conv (float32 in/out)",
                    "op_types": fallback.pop("op_types"), "fallback": fallback, "calibration": {"images": n_calib},
                    "seconds": round(time.perf_counter() - start, 2)}
            if cfg.litert.dynamic_range:
                start = time.perf_counter()
                file = ctx.out / "model_int8_dynamic.tflite"
                record = litert_format.quantize_dynamic(source, file)
                artifacts["litert_int8_dynamic"] = {
                    "file": file.name, "runtime": "litert", "precision": "int8 dynamic-range",
                    "op_types": record.get("op_types", {}), "seconds": round(time.perf_counter() - start, 2)}
        coreml = cfg.coreml
        if coreml.enabled:
            package = ctx.inputs["export"] / exported["coreml"]["file"]
            target = exported["coreml"]["package"]["target"]
            for variant in coreml.variants:
                start = time.perf_counter()
                file = ctx.out / f"model_{variant.name}.mlpackage"
                coreml_compress.compress(package, file, variant)
                checks = inspect_package(file, target)
                precision = f"int8 weights ({variant.granularity})" if variant.kind == "linear" \
                    else f"{variant.nbits}-bit palette"
                artifacts[f"coreml_{variant.name}"] = {
                    "file": file.name, "runtime": "coreml", "precision": precision,
                    "variant": variant.model_dump(), "package": checks,
                    "op_types": checks["compressed_weights"], "seconds": round(time.perf_counter() - start, 2)}
            if coreml.w8a8:
                notes.append(f"Core ML W8A8 was asked for but {NEEDS_MACOS_W8A8}" if not IS_MACOS else
                             "Core ML W8A8 is not implemented yet on macOS either")
                ctx.progress.log(f"[yellow]  {notes[-1]}[/]")
        over = {key: a["fallback"] for key, a in artifacts.items() if a.get("fallback") and not a["fallback"]["met"]}
        for key, fb in over.items():
            drop = fb["steps"][-1]["drop"] if "steps" in fb else fb["drop"]
            message = (f"{key} loses {drop:.2f} top-1 points on validation images, over quantize.max_drop = "
                       f"{cfg.max_drop}, even with layers kept in float")
            if cfg.on_over_budget == "stop":
                raise UserError(f"{message}: raise max_drop or max_fallback_layers, try another calibration_method, "
                                "or set quantize.on_over_budget = 'warn' to keep it flagged")
            notes.append(message)
            ctx.progress.log(f"[bold red]  {message}: flagged in the report[/]")
        for key, artifact in artifacts.items():
            artifact["bytes"] = artifact_bytes(ctx.out / artifact["file"])
            ctx.progress.log(f"  {key}: {artifact['bytes'] / 1e6:.2f} MB in {artifact['seconds']:.1f} s; "
                             f"INT8 op types {artifact['op_types']}")
        write_json(ctx.out / "quantize.json", {"artifacts": artifacts, "notes": notes})
        return {"artifacts": artifacts, "notes": notes}

    @staticmethod
    def _mobile(onnx_file: Path, out: Path, target_platform: str, images: np.ndarray) -> dict:
        """The .ort sibling of an INT8 ONNX file, with its agreement with that file (an .ort optimised for ARM
        fuses QDQ differently from x86, so its logits may differ slightly)."""
        record = ort_mobile.mobile_record(onnx_file, out, target_platform)
        record["parity"] = parity_of(load_runner(onnx_file), load_runner(out / record["file"]), images)
        return record
