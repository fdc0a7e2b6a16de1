"""The config models the teacher and distill stages share: the training recipe and the timm model choice."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.core.errors import clip
from pipeline.core.section import MAX_KEY_DEPTH, Section, nesting_depth

MAX_OVERRIDE = 100_000  # an integer model keyword past this (depth = 1e8) would exhaust memory in the build check


class TrainConfig(Section):
    epochs: int = Field(5, ge=0, le=10_000, description="training epochs")
    batch_size: int = Field(128, ge=1, le=65_536, description="the global batch: with nproc processes each "
                                                               "takes batch_size / nproc")
    lr: float = Field(1e-3, gt=0, le=10, description="peak AdamW learning rate, after the warm-up; cosine "
                                                     "decay to min_lr")
    min_lr: float = Field(1e-5, ge=0, description="cosine schedule floor")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(0.5, ge=0, description="linear warm-up, in epochs (fractions allowed)")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm; unset = no clipping")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    max_nonfinite_steps: int = Field(3, ge=1, description="stop after this many consecutive steps with a NaN/inf "
                                                          "loss (each such step is skipped)")
    lr_scaling: Literal["none", "linear"] = Field("none", description="linear: the lr used is lr x batch_size "
                                                                   "/ 512, as in DeiT and the reference "
                                                                   "(batch_size is the global batch)")


class ModelConfig(Section):
    model: str = Field(description="a timm model name")
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="keyword overrides for timm.create_model "
                                                  "(embed_dim, depth, num_heads, patch_size, ...)")

    @model_validator(mode="after")
    def _flat_enough(self) -> ModelConfig:
        if nesting_depth(self.overrides) > MAX_KEY_DEPTH:
            raise ValueError(f"overrides: tables nested more than {MAX_KEY_DEPTH} levels deep; timm.create_model "
                             "takes flat keyword arguments (embed_dim = 128, depth = 6, ...)")
        huge = [k for k, v in self.overrides.items() if isinstance(v, int) and not isinstance(v, bool)
                and abs(v) > MAX_OVERRIDE]
        if huge:
            raise ValueError(f"overrides: {clip(huge[0], 40)} = {self.overrides[huge[0]]:,} is past any model this "
                             f"pipeline builds (|value| <= {MAX_OVERRIDE:,}); building it would exhaust the memory")
        return self

