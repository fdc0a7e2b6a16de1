"""LiteRT: declarations only (backends/base.py)."""
from __future__ import annotations

from backends.base import Backend


class LiteRTBackend(Backend):
    name = "litert"
    runtime = "litert"
    runtime_title = "LiteRT"
    package = "ai-edge-litert"
    suffixes = (".tflite",)
    extra = "litert"
    agent = "backends.litert.agent:LiteRT"
    profiled = False


BACKEND = LiteRTBackend()
