"""Distill stage: train the student with (1-alpha) CE + alpha KD + the manifold loss over a layer map
(stages/distill/train.py; imported when the stage checks or runs, so the engine starts without torch)."""
from __future__ import annotations

from pipeline.stage import Stage, StageContext
from stages.checkpoints import CHECKPOINT


class DistillStage(Stage):
    name = "distill"
    sections = ("student", "distill", "data")
    inputs = ("data", "teacher")
    scratch = resumes = (CHECKPOINT,)
    distributed = True

    @classmethod
    def check(cls, cfg, world_size: int) -> None:
        from stages.distill.train import manifold_layers
        from stages.models import architecture
        from stages.training import check_batch_split

        check_batch_split("distill", cfg.distill.batch_size, world_size)
        data = cfg.data.channels, cfg.data.img_size
        student = architecture("student", cfg.student.model, cfg.student.overrides, *data)
        teacher = architecture("teacher", cfg.teacher.model, cfg.teacher.overrides, *data)
        manifold_layers(cfg.distill, student, teacher, cfg.data.img_size)

    def run(self, ctx: StageContext) -> dict:
        from stages.distill.train import distill

        return distill(ctx)
