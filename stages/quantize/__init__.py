"""Quantize stage: INT8 variants of the exported student (ONNX Runtime static QDQ and dynamic, each with its
.ort; OpenVINO via NNCF, optionally OpenVINO with INT8 weights only; ExecuTorch via PT2E and the XNNPACK
quantizer; LiteRT full-integer and dynamic-range), each kept within `max_drop` top-1 points of fp32
where possible by leaving layers in float. OpenVINO INT8 is timed against fp32 on this host and marked
`ship: false`, with a note in the report, when it is not faster here. Each backend is a module of this package
whose `artifacts(job)` returns its records (stages/quantize/job.py); the stage imports them when it runs."""
from __future__ import annotations

from pipeline.config import QuantizeConfig
from pipeline.errors import UserError
from pipeline.fileio import read_json, write_json
from pipeline.stage import Stage, StageContext
from stages.quantize.onnx_int8 import PREPROCESSED


class QuantizeStage(Stage):
    name = "quantize"
    sections = ("quantize",)
    inputs = ("data", "distill", "export")  # distill: ExecuTorch's PT2E quantizes the torch model
    uses_seed = False
    scratch = (PREPROCESSED,)

    def run(self, ctx: StageContext) -> dict:
        from stages.batches import load_dataset
        from stages.quantize import coreml_compress, executorch_int8, litert_int8, onnx_int8, openvino_int8
        from stages.quantize.job import QuantizeJob
        from targets.runtimes import artifact_bytes

        cfg: QuantizeConfig = ctx.config["quantize"]
        data = load_dataset(ctx.inputs["data"])
        n_calib = cfg.calibration_images
        if n_calib > len(data.train):
            ctx.progress.log(f"[yellow]  warning: quantize.calibration_images = {n_calib} but the training split has "
                             f"{len(data.train)} images; calibrating on {len(data.train)}[/]")
            n_calib = len(data.train)
        calibration, _ = data.train.head(n_calib)
        val_images, val_labels = data.val.head(cfg.validation_images)
        job = QuantizeJob(cfg, read_json(ctx.inputs["export"] / "export.json")["artifacts"], ctx.inputs["export"],
                          ctx.inputs["distill"], ctx.out, calibration, val_images, val_labels, ctx.progress.log)
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
            ctx.progress.log(f"[bold red]  {message}: flagged in the report[/]")
        for key, artifact in artifacts.items():
            artifact["bytes"] = artifact_bytes(ctx.out / artifact["file"])
            ctx.progress.log(f"  {key}: {artifact['bytes'] / 1e6:.2f} MB in {artifact['seconds']:.1f} s; "
                             f"INT8 op types {artifact['op_types']}")
        write_json(ctx.out / "quantize.json", {"artifacts": artifacts, "notes": notes})
        return {"artifacts": artifacts, "notes": notes}
