"""Export stage: the distilled student to ONNX (torch.onnx, dynamo exporter) with its ONNX Runtime Mobile .ort,
OpenVINO IR, Core ML, ExecuTorch (.pte, XNNPACK) and LiteRT (.tflite), each checked against torch on real
validation images before anything downstream uses it. Each format's converter is a module of stages/formats,
imported when the stage runs."""
from __future__ import annotations

import logging
import time

import numpy as np
from pydantic import Field

from pipeline.core.errors import UserError, skippable
from pipeline.core.fileio import write_json
from pipeline.core.section import Section
from pipeline.core.stage import Stage, StageContext
from stages.formats.coreml import CoreMLExportConfig
from stages.formats.executorch import ExecuTorchExportConfig
from stages.formats.litert import LiteRTExportConfig
from stages.formats.ort_mobile import OrtMobileConfig

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPENVINO_FILE = "openvino_model.xml"
COREML_FILE = "model.mlpackage"
EXECUTORCH_FILE = "model.pte"
LITERT_FILE = "model.tflite"
# What turns each optional format off (with what depends on it), named when the user's model fails in it.
SWITCHES = {"onnx mobile": ("export.ort_mobile.enabled",), "openvino": ("export.openvino", "quantize.openvino"),
            "executorch": ("export.executorch.enabled",), "litert": ("export.litert.enabled",),
            "coreml": ("export.coreml.enabled", "quantize.coreml.enabled")}


class ExportConfig(Section):
    opset: int = Field(20, ge=17, le=22, description="ONNX opset (17 has LayerNormalization; 23 fuses "
                                                     "attention, which quantizers do not take yet)")
    openvino: bool = Field(True, description="also convert to OpenVINO IR")
    openvino_fp16: bool = Field(False, description="store the IR's weights as fp16 (half the size)")
    parity_images: int = Field(512, ge=1, description="validation images for the parity check")
    parity_max_abs_diff: float = Field(1e-3, gt=0, description="max |logit diff| vs torch (fp32 exports)")
    parity_max_abs_diff_fp16: float = Field(5e-2, gt=0, description="the same for fp16-compressed weights")
    parity_min_agreement: float = Field(0.99, ge=0, le=1, description="min share of equal argmax vs torch")
    coreml: CoreMLExportConfig = Field(default_factory=CoreMLExportConfig)
    ort_mobile: OrtMobileConfig = Field(default_factory=OrtMobileConfig)
    executorch: ExecuTorchExportConfig = Field(default_factory=ExecuTorchExportConfig)
    litert: LiteRTExportConfig = Field(default_factory=LiteRTExportConfig)


def parity(reference: np.ndarray, logits: np.ndarray) -> dict:
    diff = float(np.abs(reference - logits).max())
    return {"max_abs_diff": diff, "max_rel_diff": diff / max(float(np.abs(reference).max()), 1e-12),
            "argmax_agreement": float((reference.argmax(1) == logits.argmax(1)).mean()),
            "images": int(len(reference))}


def check_parity(name: str, path, model_name: str, images: np.ndarray, reference: np.ndarray, bound: float,
                 relative: bool, agreement: float) -> dict:
    """Run the exported file in its runtime on the parity images against torch's logits; a UserError when it is
    outside the bounds. Core ML on Linux with an op the simulation lacks is recorded as not simulated."""
    from targets.coreml import NotSimulated
    from targets.runtimes import load_runner, predict

    try:
        runner = load_runner(path)
    except NotSimulated as exc:
        log.warning(f"{name}: {exc}")
        return {"evaluation": "not simulated", "reason": str(exc)}
    check = {**parity(reference, predict(runner, [images])), "evaluation": runner.evaluation}
    log.info(f"{name} ({runner.evaluation}) vs torch on {check['images']} validation images: max |diff| "
             f"{check['max_abs_diff']:.2e}, argmax agreement {100 * check['argmax_agreement']:.2f}%")
    if check["max_rel_diff" if relative else "max_abs_diff"] > bound or check["argmax_agreement"] < agreement:
        allowed = f"{bound:.2%} of the largest |logit|" if relative else f"{bound:g}"
        raise UserError(f"{name} export of {model_name} fails the parity check: max |logit diff| "
                        f"{check['max_abs_diff']:.3g} ({check['max_rel_diff']:.2%} of the largest |logit|; allowed "
                        f"{allowed}), argmax agreement {check['argmax_agreement']:.4f} (required {agreement:g}); "
                        "nothing downstream uses it. Loosen [export] parity_* only if you accept this")
    return check


class ExportStage(Stage):
    name = "export"
    sections = ("export",)
    inputs = ("data", "distill")
    uses_seed = False

    def run(self, ctx: StageContext) -> dict:
        import torch

        from stages.batches import load_dataset
        from stages.formats import executorch as executorch_format
        from stages.formats import litert as litert_format
        from stages.formats import ort_mobile
        from stages.formats.coreml import export_coreml
        from stages.formats.onnx import export_onnx
        from stages.formats.openvino import export_openvino
        from stages.models import load_model
        from targets.coreml import inspect_package
        from targets.numerics import floating
        from targets.runtimes import artifact_bytes

        cfg: ExportConfig = ctx.config["export"]
        data = load_dataset(ctx.inputs["data"])
        model, record = load_model(ctx.inputs["distill"] / "model.pt")
        shape = tuple(data.val.images.shape[1:])
        images, _ = data.val.head(cfg.parity_images)
        with torch.no_grad():
            reference = model(torch.from_numpy(images)).numpy()

        start = time.perf_counter()
        export_onnx(model, record["model"], shape, ctx.out / ONNX_FILE, cfg.opset)
        artifacts = {"onnx": {"file": ONNX_FILE, "runtime": "onnxruntime", "precision": "fp32",
                              "numerics": floating("fp32"),
                              "bytes": artifact_bytes(ctx.out / ONNX_FILE),
                              "seconds": round(time.perf_counter() - start, 2)}}
        if cfg.ort_mobile.enabled:
            with skippable(*SWITCHES["onnx mobile"]):
                artifacts["onnx"]["mobile"] = ort_mobile.mobile_record(ctx.out / ONNX_FILE, ctx.out,
                                                                       cfg.ort_mobile.target_platform)
        if cfg.openvino:
            start = time.perf_counter()
            with skippable(*SWITCHES["openvino"]):
                export_openvino(ctx.out / ONNX_FILE, ctx.out / OPENVINO_FILE, cfg.openvino_fp16)
            artifacts["openvino"] = {"file": OPENVINO_FILE, "runtime": "openvino",
                                     "precision": "fp16 weights" if cfg.openvino_fp16 else "fp32",
                                     "numerics": floating("fp16", "fp32") if cfg.openvino_fp16 else floating("fp32"),
                                     "bytes": artifact_bytes(ctx.out / OPENVINO_FILE),
                                     "seconds": round(time.perf_counter() - start, 2)}
        if cfg.executorch.enabled:
            start = time.perf_counter()
            with skippable(*SWITCHES["executorch"]):
                lowered = executorch_format.export(model, shape, ctx.out / EXECUTORCH_FILE,
                                                   cfg.executorch.max_batch, record["model"])
            artifacts["executorch"] = {"file": EXECUTORCH_FILE, "runtime": "executorch", "precision": "fp32",
                                       "numerics": floating("fp32"),
                                       "bytes": artifact_bytes(ctx.out / EXECUTORCH_FILE), **lowered,
                                       "seconds": round(time.perf_counter() - start, 2)}
        if cfg.litert.enabled:
            start = time.perf_counter()
            with skippable(*SWITCHES["litert"]):
                converted = litert_format.export(model, shape, ctx.out / LITERT_FILE, data.meta["mean"],
                                                   data.meta["std"])
            artifacts["litert"] = {"file": LITERT_FILE, "runtime": "litert", "precision": "fp32",
                                   "numerics": floating("fp32"),
                                   "bytes": artifact_bytes(ctx.out / LITERT_FILE), **converted,
                                   "seconds": round(time.perf_counter() - start, 2)}
        coreml = cfg.coreml
        if coreml.enabled:
            start = time.perf_counter()
            with skippable(*SWITCHES["coreml"]):
                export_coreml(model, record, data.meta, coreml, ctx.out / COREML_FILE, ctx.key)
                package = inspect_package(ctx.out / COREML_FILE, coreml.target)
                if package["unsupported_ops"]:
                    raise UserError(f"model.mlpackage uses ops not available at export.coreml.target = "
                                    f"{coreml.target}: {', '.join(package['unsupported_ops'])}; choose a newer target")
            artifacts["coreml"] = {"file": COREML_FILE, "runtime": "coreml", "precision": coreml.precision,
                                   "numerics": floating(coreml.precision),
                                   "bytes": package["bytes"], "seconds": round(time.perf_counter() - start, 2),
                                   "package": package}
        for key, artifact in artifacts.items():
            relative = key == "coreml"  # an fp16 program: its error scales with the logits
            bound = coreml.parity_max_rel_diff if relative else cfg.parity_max_abs_diff_fp16 \
                if artifact["numerics"]["weights"] == "fp16" else cfg.parity_max_abs_diff
            agreement = coreml.parity_min_agreement if key == "coreml" else cfg.parity_min_agreement
            checked = [(artifact["runtime"], artifact, SWITCHES.get(key, ()))]
            if "mobile" in artifact:  # the .ort sibling: the same graph, optimised for the phone's CPU
                checked.append((f"{artifact['runtime']} mobile (.ort)", artifact["mobile"], SWITCHES["onnx mobile"]))
            for name, entry, switches in checked:
                with skippable(*switches):
                    entry["parity"] = check_parity(name, ctx.out / entry["file"], record["model"], images, reference,
                                                   bound, relative, agreement)
        write_json(ctx.out / "export.json", {"model": record["model"], "input_shape": [None, *shape],
                                              "opset": cfg.opset, "artifacts": artifacts})
        return {"artifacts": artifacts}
