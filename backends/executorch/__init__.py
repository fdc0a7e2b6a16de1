"""ExecuTorch: declarations only (backends/base.py)."""
from __future__ import annotations

from backends.base import Backend


class ExecuTorchBackend(Backend):
    name = "executorch"
    runtime = "executorch"
    runtime_title = "ExecuTorch"
    package = "executorch"
    suffixes = (".pte",)
    extra = "executorch"
    agent = "backends.executorch.agent:ExecuTorch"
    profiled = True


BACKEND = ExecuTorchBackend()
