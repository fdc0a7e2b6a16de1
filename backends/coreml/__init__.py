"""Core ML: declarations only (backends/base.py)."""
from __future__ import annotations

from backends.base import Backend


class CoreMLBackend(Backend):
    name = "coreml"
    runtime = "coreml"
    runtime_title = "Core ML"
    package = "coremltools"
    suffixes = (".mlpackage",)
    extra = "coreml"
    agent = "backends.coreml.agent:CoreML"
    profiled = False


BACKEND = CoreMLBackend()
