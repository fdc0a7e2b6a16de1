"""OpenVINO: declarations only (backends/base.py)."""
from __future__ import annotations

from backends.base import Backend


class OpenVinoBackend(Backend):
    name = "openvino"
    runtime = "openvino"
    runtime_title = "OpenVINO"
    package = "openvino"
    suffixes = (".xml",)
    extra = "openvino"
    agent = "backends.openvino.agent:OpenVino"
    profiled = True


BACKEND = OpenVinoBackend()
