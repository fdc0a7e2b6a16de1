"""ONNX Runtime Mobile: the .ort file runs like its .onnx, and ORT's usability check is recorded per provider."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from backends import load_runner
from backends.base import predict
from backends.onnx.export import export_onnx
from backends.onnx.mobile import mobile_record
from pipeline.core.errors import UserError


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                              num_classes=10, in_chans=1).eval()
    path = tmp_path_factory.mktemp("ort") / "model.onnx"
    export_onnx(model, "vit", (1, 16, 16), path, 20)
    return path


def test_ort_file_matches_its_onnx_and_records_provider_coverage(tiny_onnx):
    record = mobile_record(tiny_onnx, tiny_onnx.parent, "arm")
    ort_file = tiny_onnx.parent / record["file"]
    assert ort_file.suffix == ".ort" and ort_file.read_bytes()[4:8] == b"ORTM"  # the flatbuffer's identifier
    x = np.random.default_rng(0).random((5, 1, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(predict(load_runner(ort_file), [x]), predict(load_runner(tiny_onnx), [x]), atol=1e-5)
    for ep in ("NNAPI", "CoreML MLProgram"):
        exported, fixed = (record["execution_providers"][ep][k] for k in ("as_exported", "fixed_shapes"))
        assert 0 < fixed["supported_nodes"] <= fixed["nodes"] and fixed["partitions"] >= 1
        assert exported["supported_nodes"] < fixed["supported_nodes"]  # the dynamic batch keeps nodes off the NPU
        assert fixed["suitability"] in ("YES", "MAYBE", "NO")
    assert not list(tiny_onnx.parent.glob("*.config")) and not list(tiny_onnx.parent.glob("tmp*"))


def test_a_tampered_ort_file_is_refused_in_one_line(tiny_onnx, tmp_path):
    record = mobile_record(tiny_onnx, tmp_path, "arm")
    ort_file = tmp_path / record["file"]
    data = bytearray(ort_file.read_bytes())
    ort_file.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(UserError, match=r"^onnxruntime cannot load model\.ort"):
        load_runner(ort_file)
