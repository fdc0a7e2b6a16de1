"""A toy format, registered by tests/test_backends.py alone: model.onnx copied under a suffix of its own and run
by ONNX Runtime under a runtime name of its own ("onnxcopy"), so a target can link it and nothing else. It is
what docs/development.md's "Adding a format" asks for and no more: this folder and one registry line."""
from __future__ import annotations

from backends.onnx import OnnxBackend


class OnnxCopyBackend(OnnxBackend):
    """ONNX's runner, agent adapter and app files; its own name, suffix, runtime and export, no config fields."""

    name = "onnx_copy"
    runtime = "onnxcopy"
    runtime_title = "ONNX copy (a test's toy)"
    suffixes = (".onnxcopy",)
    export_fields = None
    quantize_fields = None
    export_module = "tests.toy_backend.export"
    quantize_module = None
    scratch = ()

    def check(self, cfg, world_size: int) -> None:
        """Nothing of its own to check (ONNX's check reads quantize fields the toy does not add)."""


BACKEND = OnnxCopyBackend()
