"""Export stage: the distilled student in every registered format (backends/: ONNX with its .ort, OpenVINO IR,
ExecuTorch, LiteRT, Core ML), each file checked against torch on real validation images before anything
downstream uses it. The [export] section is composed from the backends' declared fields."""
from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

import backends
from backends.base import Backend
from pipeline.core.errors import skippable
from pipeline.core.fileio import write_json
from pipeline.core.section import Section, not_in_key
from pipeline.core.stage import Stage, StageContext

log = logging.getLogger(__name__)


class ExportParity(Section):
    parity_images: int = Field(512, ge=1, description="validation images for the parity check (the first 64 "
                                                      "decide alone when well inside the bounds: docs/export.md)")
    parity_max_abs_diff: float = Field(1e-3, gt=0, description="max |logit diff| vs torch (fp32 exports)")
    parity_max_abs_diff_fp16: float = Field(5e-2, gt=0, description="the same for fp16-compressed weights")
    parity_min_agreement: float = Field(0.99, ge=0, le=1, description="min share of equal argmax vs torch")
    processes: int = not_in_key(0, "processes the formats run in: 2 puts ExecuTorch in a worker process (which "
                                   "then takes formats from the back of the order), 1 "
                                   "runs every format here; 0: 2 where 2 cores are usable", ge=0, le=2)


def compose(name: str, common: type[Section], fields: list[type[Section]]) -> type[Section]:
    """One config section: the common fields, then each backend's in registry order; declared in the module of
    its common fields (the stage's own)."""
    return type(name, (*reversed(fields), common), {"__module__": common.__module__})


def export_config() -> type[Section]:
    return compose("ExportConfig", ExportParity, [b.export_fields for b in backends.backends() if b.export_fields])


class ExportStage(Stage):
    name = "export"
    sections = ("export",)
    inputs = ("data", "distill")
    uses_seed = False
    scripts = backends.modules("export", "runner")  # the backends' code, reached through the registry

    @classmethod
    def check(cls, cfg, world_size: int) -> None:
        for backend in backends.backends():
            backend.check(cfg, world_size)

    def run(self, ctx: StageContext) -> dict:
        import torch

        from backends.base import ExportJob
        from stages import formats
        from stages.batches import load_dataset
        from stages.models import load_model

        cfg = ctx.config["export"]
        data = load_dataset(ctx.inputs["data"])
        model, record = load_model(ctx.inputs["distill"] / "model.pt")
        shape = tuple(data.val.images.shape[1:])
        images, _ = data.val.head(cfg.parity_images)
        with torch.no_grad():
            reference = model(torch.from_numpy(images)).numpy()
        job = ExportJob(cfg, model, record, shape, data.meta, ctx.out, ctx.key, images, reference)
        args = {"cfg": cfg.model_dump(), "model": ctx.inputs["distill"] / "model.pt", "shape": shape,
                "meta": data.meta, "out": ctx.out, "key": ctx.key, "images": images, "reference": reference}
        done = formats.run(backends.backends(), job, ExportStage._export, export_job, args, cfg.processes)
        job.artifacts = {key: record for records, _ in done for key, record in records.items()}  # registry order
        write_json(ctx.out / "export.json", {"model": record["model"], "input_shape": [None, *shape],
                                              "opset": cfg.opset, "artifacts": job.artifacts})
        return {"artifacts": job.artifacts}

    @staticmethod
    def _export(backend: Backend, job) -> dict[str, dict]:
        """One backend's files, each checked for parity and added to job.artifacts (the next backend may convert
        one); a failure names the settings that turn it off."""
        with skippable(*backend.switches):
            records = backend.export(job)
        for record in records.values():
            job.check_parity(record["runtime"], record)
        job.artifacts.update(records)
        return records


def export_job(cfg: dict, model: Path, shape: tuple[int, ...], meta: dict, out: Path, key: str, images, reference):
    """The stage's ExportJob, built again in a worker process (stages/formats.py)."""
    from backends.base import ExportJob
    from stages.models import load_model

    student, record = load_model(model)
    return ExportJob(export_config().model_validate(cfg), student, record, shape, meta, out, key, images, reference)
