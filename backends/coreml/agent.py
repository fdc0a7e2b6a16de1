"""The agent's Core ML adapter (targets/agent/adapter.py): predictions need macOS (Core ML.framework). Shipped
inside the agent's zipapp: standard library, numpy, coremltools and Pillow (imported when a model loads) and
targets.agent only."""
from __future__ import annotations

import argparse
import os
import platform
import sys

from targets.agent.adapter import Adapter, fixed_shape
from targets.agent.errors import AgentError, require


class CoreML(Adapter):
    """An .mlpackage; image inputs take 0-255 pixels (one image per call), multi-array inputs float32 tensors.
    Per-layer profiles of Core ML need Xcode's Core ML Instruments."""

    name = "coreml"
    title = "Core ML"
    module = None  # coremltools is imported with the model, and counted in it
    pixels = True

    def __init__(self, path: str, threads: int, compute_units: str):
        if sys.platform != "darwin":
            raise AgentError("needs_macos", "Core ML predictions need macOS (Core ML.framework); "
                                            "this device runs " + platform.system())
        ct = require("coremltools")
        self.version = ct.__version__
        try:
            self.model = ct.models.MLModel(path, compute_units=ct.ComputeUnit[compute_units])
        except Exception as exc:
            raise AgentError("bad_model", f"Core ML cannot load {os.path.basename(path)}: {exc}") from None
        spec = self.model.get_spec()
        self.input = spec.description.input[0]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument_group(cls.title).add_argument(
            "--compute-units", default="ALL", choices=("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"),
            help="the Core ML compute units a model may run on")

    @classmethod
    def load(cls, args: argparse.Namespace, profile_dir: str | None = None) -> CoreML:
        return cls(args.model, args.threads, args.compute_units)

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        if self.input.type.WhichOneof("Type") == "imageType":
            t = self.input.type.imageType
            channels = 1 if t.colorSpace == 10 else 3  # 10 = GRAYSCALE in the Core ML spec
            return [1, channels, t.height, t.width]
        return fixed_shape(list(self.input.type.multiArrayType.shape), batch, size)

    def __call__(self, x):
        if self.input.type.WhichOneof("Type") == "imageType":
            from PIL import Image

            pixels = (x[0].clip(0, 255)).astype("uint8")
            image = Image.fromarray(pixels[0], "L") if pixels.shape[0] == 1 else \
                Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
            return self.model.predict({self.input.name: image})
        return self.model.predict({self.input.name: x})
