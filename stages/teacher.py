"""Teacher stage: a timm model trained here, fine-tuned from a local checkpoint, or from timm's weights.

Like every stage module it imports only the engine at the top: torch, timm and the training loop are imported
when the stage checks or runs, so `status` and `schema` start without them."""
from __future__ import annotations

import logging

from pydantic import Field, model_validator

from pipeline.core.distributed import world
from pipeline.core.errors import UserError, quote
from pipeline.core.stage import Stage, StageContext
from stages.checkpoints import CHECKPOINT, METRICS
from stages.data import DataConfig
from stages.recipe import ModelConfig, TrainConfig

log = logging.getLogger(__name__)


class TeacherConfig(ModelConfig, TrainConfig):
    model: str = Field("convstem_vit_small", description="any timm model name (a ViT, a hierarchical "
                       "transformer or a CNN); from checkpoint, pretrained weights or trained here from scratch")
    pretrained: bool = Field(False, description="load timm's published weights (needs the hub)")
    pretrained_file: str | None = Field(None, description="with pretrained: a local weights file instead")
    checkpoint: str | None = Field(None, description="a local state dict or a model.pt of ours")
    epochs: int = Field(5, ge=0, le=10_000, description="training (or fine-tuning) epochs; 0 = use as loaded")

    @model_validator(mode="after")
    def _check(self) -> TeacherConfig:
        if self.pretrained and self.checkpoint:
            raise ValueError("teacher.pretrained and teacher.checkpoint exclude each other: pick one")
        if self.pretrained_file and not self.pretrained:
            raise ValueError("teacher.pretrained_file needs teacher.pretrained = true")
        if not (self.pretrained or self.checkpoint) and self.epochs == 0:
            raise ValueError("teacher.epochs = 0 leaves a random teacher: set epochs, a checkpoint or pretrained")
        return self


class TeacherStage(Stage):
    name = "teacher"
    sections = ("teacher", "data")
    inputs = ("data",)
    scratch = resumes = (CHECKPOINT,)
    distributed = True

    @classmethod
    def check(cls, cfg, world_size: int) -> None:
        from stages.data import class_count
        from stages.models import architecture, check_checkpoint, has_published_weights, readable_checkpoint
        from stages.training import check_batch_split

        teacher = cfg.teacher
        if teacher.epochs:
            check_batch_split("teacher", teacher.batch_size, world_size)
        if teacher.pretrained_file:
            readable_checkpoint("teacher.pretrained_file", teacher.pretrained_file)
        if teacher.pretrained and not teacher.pretrained_file and not has_published_weights(teacher.model):
            raise UserError(f"teacher.pretrained = true: timm publishes no weights for {quote(teacher.model)}; set "
                            "teacher.pretrained = false, or give teacher.pretrained_file (a local checkpoint)")
        model = architecture("teacher", teacher.model, teacher.overrides, cfg.data.channels, cfg.data.img_size,
                             class_count(cfg.data))
        if teacher.checkpoint:  # its tensors against the model's shapes, as the stage will load it
            check_checkpoint("teacher", model, teacher.checkpoint)

    def run(self, ctx: StageContext) -> dict:
        import torch
        import torch.nn.functional as F

        from stages.batches import load_dataset
        from stages.models import create_model, data_kwargs, load_weights, save_model
        from stages.training import accuracy, fit

        cfg: TeacherConfig = ctx.config["teacher"]
        data_cfg: DataConfig = ctx.config["data"]
        data = load_dataset(ctx.inputs["data"])
        torch.manual_seed(ctx.seed)
        model, kwargs = create_model("teacher", cfg.model, cfg.overrides, data_kwargs(data.meta),
                                     cfg.pretrained, cfg.pretrained_file)
        if cfg.checkpoint:
            load_weights("teacher", model, cfg.checkpoint)
        source = "checkpoint" if cfg.checkpoint else "pretrained" if cfg.pretrained else "scratch"
        rows = []
        if cfg.epochs:
            def step(forward, x, y, rng):
                loss = F.cross_entropy(forward(x), y, label_smoothing=cfg.label_smoothing)
                return loss, {"ce": loss.detach()}

            rows = fit(model, step, data.train, data.val, cfg, data_cfg.augment_shift, data_cfg.augment_flip,
                       ctx.out, ctx.device, ctx.seed, ctx.progress, "teacher", ctx.accel)
        model.to(ctx.device)
        val = accuracy(model, data.val, ctx.device)[1]
        if world().main:
            save_model(ctx.out / "model.pt", model, cfg.model, kwargs)
        log.info(f"teacher {cfg.model} ({source}): val top-1 {val:.2f}%")
        return {"model": cfg.model, "source": source, "epochs": cfg.epochs, "val_top1": round(val, 3),
                "params": sum(p.numel() for p in model.parameters()),
                "train_seconds": round(sum(r["seconds"] for r in rows), 1), "processes": world().size,
                "metrics_file": METRICS if rows else None}
