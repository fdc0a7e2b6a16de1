"""Quantize stage: INT8 (or compressed) variants of the exported student from every registered backend
(backends/: ONNX Runtime static QDQ and dynamic, each with its .ort; OpenVINO via NNCF; ExecuTorch via PT2E and
the XNNPACK quantizer; LiteRT full-integer and dynamic-range; Core ML weight compression), each kept within
`max_drop` top-1 points of fp32 where possible by leaving layers in float. The [quantize] section is composed
from the common fields below and the backends' declared fields."""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import Field

import backends
from pipeline.core.errors import UserError
from pipeline.core.fileio import read_json, write_json
from pipeline.core.section import Section, not_in_key
from pipeline.core.stage import Stage, StageContext
from stages.export import compose

log = logging.getLogger(__name__)


class QuantizeCommon(Section):
    calibration_images: int = Field(512, ge=1, description="training images for calibration")
    max_drop: float = Field(1.0, ge=0, le=100, description="allowed top-1 drop (points) vs fp32 on "
                                                           "validation images before layers fall back to float")
    validation_images: int = Field(1000, ge=1, description="validation images for max_drop and sensitivity")
    max_fallback_layers: int = Field(8, ge=0, description="at most this many layers kept in float")
    max_fallback_seconds: float = Field(600.0, ge=0, description="no new fallback step (or layer ranking) starts "
                                                                 "after this many seconds per INT8 file; 0: no bound")
    on_over_budget: Literal["warn", "stop"] = Field("warn", description="an INT8 model still over max_drop after "
                                                    "the fallback: flag it in the report, or stop the run")
    processes: int = not_in_key(0, "processes the formats run in: 2 puts ExecuTorch in a worker process (which "
                                   "then takes formats from the back of the order), 1 "
                                   "runs every format here; 0: 2 where 2 cores are usable", ge=0, le=2)


def quantize_config() -> type[Section]:
    return compose("QuantizeConfig", QuantizeCommon,
                   [b.quantize_fields for b in backends.backends() if b.quantize_fields])


class QuantizeStage(Stage):
    name = "quantize"
    sections = ("quantize",)
    inputs = ("data", "distill", "export")  # distill: ExecuTorch's PT2E quantizes the torch model
    uses_seed = False
    scripts = backends.modules("quantize", "runner")  # the backends' code, reached through the registry
    scratch = tuple(name for b in backends.backends() for name in b.scratch)

    def run(self, ctx: StageContext) -> dict:
        from backends import artifact_bytes
        from stages import formats
        from stages.batches import load_dataset

        cfg = ctx.config["quantize"]
        data = load_dataset(ctx.inputs["data"])
        n_calib = cfg.calibration_images
        if n_calib > len(data.train):
            log.warning(f"quantize.calibration_images = {n_calib} but the training split has {len(data.train)} "
                        f"images; calibrating on {len(data.train)}")
            n_calib = len(data.train)
        calibration, _ = data.train.head(n_calib)
        val_images, val_labels = data.val.head(cfg.validation_images)
        args = {"cfg": cfg.model_dump(), "exported": read_json(ctx.inputs["export"] / "export.json")["artifacts"],
                "export_dir": ctx.inputs["export"], "model": ctx.inputs["distill"] / "model.pt", "out": ctx.out,
                "calibration": calibration, "val_images": val_images, "val_labels": val_labels}
        job = quantize_job(**args)
        artifacts, notes = {}, []
        for records, said in formats.run(backends.backends(), job, _quantize, quantize_job, args, cfg.processes):
            artifacts.update(records)
            notes += said
        over = {key: a["fallback"] for key, a in artifacts.items() if a.get("fallback") and not a["fallback"]["met"]}
        for key, fb in over.items():
            last = fb["steps"][-1] if "steps" in fb else fb
            real = (f" (95% interval of the change {last['delta_interval'][0]:+.2f} to "
                    f"{last['delta_interval'][1]:+.2f})" if "delta_interval" in last else "")
            timed_out = (f" (its fallback stopped at quantize.max_fallback_seconds = {cfg.max_fallback_seconds:g})"
                         if fb.get("stopped") == "max_fallback_seconds" else "")
            message = (f"{key} loses {last['drop']:.2f} top-1 points on validation images{real}, over "
                       f"quantize.max_drop = {cfg.max_drop}, even with layers kept in float{timed_out}")
            if cfg.on_over_budget == "stop":
                raise UserError(f"{message}: raise max_drop, max_fallback_layers or max_fallback_seconds, try another "
                                "calibration_method, or set quantize.on_over_budget = 'warn' to keep it flagged")
            notes.append(message)
            log.error(f"{message}: flagged in the report, and no target ships it")
        for artifact in artifacts.values():
            kept = (artifact.get("fallback") or {}).get("excluded_names") or []
            if kept and artifact["fallback"].get("layers"):
                artifact["precision"] += f", mixed: {len(kept)} of {artifact['fallback']['layers']} layers float"
        for key, artifact in artifacts.items():
            artifact["bytes"] = artifact_bytes(ctx.out / artifact["file"])
            log.info(f"{key}: {artifact['bytes'] / 1e6:.2f} MB in {artifact['seconds']:.1f} s; INT8 op types "
                     f"{artifact['op_types']}")
        write_json(ctx.out / "quantize.json", {"artifacts": artifacts, "notes": notes})
        return {"artifacts": artifacts, "notes": notes}


def quantize_job(cfg: dict, exported: dict, export_dir: Path, model: Path, out: Path, calibration, val_images,
                 val_labels):
    """The stage's QuantizeJob (built again in a worker process: stages/formats.py)."""
    from backends.base import QuantizeJob
    from stages.models import load_model

    return QuantizeJob(quantize_config().model_validate(cfg), exported, export_dir, partial(load_model, model), out,
                       calibration, val_images, val_labels)


def _quantize(backend, job) -> dict[str, dict]:
    return backend.quantize(job)
