"""The latency floor (targets/floor.py: the model's own GEMM shapes timed in ONNX Runtime's MatMul and
MatMulInteger kernels) and FLOPs with fused attention counted (stages/flops.flops_per_image)."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from onnx import numpy_helper
from torch.utils.flop_counter import FlopCounterMode

from backends.onnx.export import export_onnx
from stages.flops import flops_per_image
from stages.models import create_model
from targets.floor import _graph, gemm_input, gemm_session, gemm_shapes, measure_peak


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The default student's layers (dim 64, 4 blocks, 2 heads) at 28x28 with 4-px patches: 7x7 patches + class
    token = 50 tokens."""
    torch.manual_seed(0)
    model, _ = create_model("student", "convstem_vit_tiny", {"patch_size": 4},
                            {"in_chans": 1, "num_classes": 10, "img_size": 28})
    path = tmp_path_factory.mktemp("floor") / "model.onnx"
    export_onnx(model.eval(), "convstem_vit_tiny", (1, 28, 28), path, 20)
    return model, path


def test_gemm_shapes_come_from_the_exported_model_at_batch_1(student):
    model, path = student
    gemms = gemm_shapes(path)
    shapes = [(g.op_type, g.batch, g.m, g.k, g.n) for g in gemms]
    assert shapes.count(("MatMul", 1, 50, 64, 192)) == 4  # qkv per block
    assert shapes.count(("MatMul", 1, 50, 64, 128)) == 4 and shapes.count(("MatMul", 1, 50, 128, 64)) == 4  # MLP
    assert shapes.count(("MatMul", 2, 50, 32, 50)) == 4 and shapes.count(("MatMul", 2, 50, 50, 32)) == 4  # Q K^T, A V
    assert ("Gemm", 1, 1, 64, 10) in shapes  # the head
    assert [s for s in shapes if s[0] == "Conv"]  # the conv stem as im2col GEMMs
    # the GEMMs carry all the model's FLOPs, as torch counts them with attention included
    assert sum(g.flops for g in gemms) == flops_per_image(model, (1, 28, 28))


@pytest.mark.parametrize("op", ["fp32", "int8"])
def test_gemm_graphs_compute_the_product(op):
    m, k, n = 5, 48, 24
    session = gemm_session(op, m, k, n, threads=1, copies=2)
    a = gemm_input(op, m, k)
    weights = {t.name: numpy_helper.to_array(t) for t in _graph(op, m, k, n, 2).graph.initializer}
    for y, b in zip(session.run(None, {"a": a}), (weights["b0"], weights["b1"])):
        if op == "fp32":
            np.testing.assert_allclose(y, a @ b, rtol=1e-4, atol=1e-4)
        else:  # U8S8 with zero points 128 / 0: exact int32
            assert y.dtype == np.int32
            np.testing.assert_array_equal(y, (a.astype(np.int32) - 128) @ b.astype(np.int32))


def test_peaks_are_measured_in_cpu_and_wall_time():
    peak = measure_peak("int8", 50, 64, 64, threads=1, seconds=0.05)
    assert peak["gflops_cpu"] > 0 and peak["gflops_wall"] > 0 and peak["runs"] >= 5 and peak["copies"] > 1


def vit_flops(img: int, patch: int, dim: int, depth: int, mlp_ratio: float, classes: int, chans: int = 3) -> int:
    """Analytic forward FLOPs of a timm ViT with a class token (multiply-add = 2; bias, norm and
    activation FLOPs left out, as torch's counter does): patch embedding + per block qkv, proj and MLP
    (2 N D (3D + D + 2 r D)) and attention (Q K^T and A V, 2 N^2 D each over all heads) + head."""
    patches = (img // patch) ** 2
    n, hidden = patches + 1, int(dim * mlp_ratio)
    embed = 2 * patches * dim * chans * patch * patch
    block = 2 * n * dim * (3 * dim + dim + 2 * hidden) + 4 * n * n * dim
    return embed + depth * block + 2 * dim * classes


def test_flops_count_fused_attention():
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10).eval()
    expected = vit_flops(64, 16, 192, 12, 4.0, 10)
    counted = flops_per_image(model, (3, 64, 64))
    assert abs(counted - expected) <= 0.01 * expected
    plain = FlopCounterMode(display=False)  # torch's own counter misses F.scaled_dot_product_attention on CPU
    with plain, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert plain.get_total_flops() < counted
