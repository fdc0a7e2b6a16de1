"""Distill stage: train the student with (1-alpha) CE + alpha KD + the manifold loss over a layer map
(stages/distill/train.py; imported when the stage checks or runs, so the engine starts without torch)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.stage import Stage, StageContext
from stages.checkpoints import CHECKPOINT
from stages.recipe import ModelConfig, TrainConfig


class StudentConfig(ModelConfig):
    model: str = Field("convstem_vit_tiny", description="any timm model name; a DeiT distilled student "
                       "(deit_*_distilled_*) sends KD to its distillation head and CE to its class head")


PAPER_PRESET = {"alpha": 1.0, "w_intra": 4.0, "w_inter": 0.1, "w_random": 0.2, "k": 192, "beta": 1.0}


class DistillConfig(TrainConfig):
    epochs: int = Field(6, ge=1, le=10_000, description="training epochs of the student")
    preset: Literal["none", "paper"] = Field("none", description="paper: the paper's loss weights, over any "
                                             "given: " + ", ".join(f"{k} = {v:g}" for k, v in PAPER_PRESET.items()))
    kd: Literal["none", "soft", "hard"] = Field("soft", description="logit distillation")
    alpha: float = Field(0.5, ge=0, le=1, description="(1-alpha) CE + alpha KD")
    temperature: float = Field(1.0, gt=0, description="KD temperature T (soft: T^2 KL of the softened outputs)")
    manifold: bool = Field(True, description="add the fine-grained manifold loss")
    w_intra: float = Field(4.0, ge=0, description="intra-image relation weight")
    w_inter: float = Field(0.1, ge=0, description="inter-image relation weight")
    w_random: float = Field(0.2, ge=0, description="random-sampled relation weight")
    k: int = Field(192, ge=1, description="tokens sampled for the random-sampled term")
    beta: float = Field(1.0, ge=0, description="overall manifold weight")
    student_layers: list[int] | None = Field(None, description="student units to match: blocks of a ViT/DeiT/CaiT, "
                                             "stages (timm feature_info) of hierarchical models and CNNs "
                                             "(default: first and last third)")
    teacher_layers: list[int] | None = Field(None, description="teacher units, paired in order")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data):
        return {**data, **PAPER_PRESET} if isinstance(data, dict) and data.get("preset") == "paper" else data

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        s, t = self.student_layers, self.teacher_layers
        if (s is None) != (t is None):
            raise ValueError("give both distill.student_layers and distill.teacher_layers, or neither")
        if s is not None and len(s) != len(t):
            raise ValueError(f"distill.student_layers ({len(s)}) and distill.teacher_layers ({len(t)}) "
                             "must pair up: give the same number of blocks")
        if s is not None and not s:
            raise ValueError("distill.student_layers is empty: set distill.manifold = false instead")
        for field, layers in (("student", s), ("teacher", t)):
            negative = [i for i in layers or () if i < 0]
            if negative:
                raise ValueError(f"distill.{field}_layers: {negative} is negative; units count from 0 (the first "
                                 "block or stage) to N-1")
            twice = sorted({i for i in layers or () if layers.count(i) > 1})
            if twice:
                raise ValueError(f"distill.{field}_layers: {twice} given more than once; match each unit once "
                                 "(give another unit, or drop the repeated pair)")
        return self


class DistillStage(Stage):
    name = "distill"
    sections = ("student", "distill", "data")
    inputs = ("data", "teacher")
    scratch = resumes = (CHECKPOINT,)
    distributed = True

    @classmethod
    def check(cls, cfg, world_size: int) -> None:
        from stages.data import class_count
        from stages.distill.train import manifold_layers
        from stages.models import architecture
        from stages.training import check_batch_split

        check_batch_split("distill", cfg.distill.batch_size, world_size)
        data = cfg.data.channels, cfg.data.img_size, class_count(cfg.data)
        student = architecture("student", cfg.student.model, cfg.student.overrides, *data)
        teacher = architecture("teacher", cfg.teacher.model, cfg.teacher.overrides, *data)
        manifold_layers(cfg.distill, student, teacher, cfg.data.img_size)

    def run(self, ctx: StageContext) -> dict:
        from stages.distill.train import distill

        return distill(ctx)
