"""ExecuTorch: .pte export to XNNPACK, INT8 with the accuracy fallback, the runner, on a tiny convstem ViT
trained here for a few seconds on sklearn's digits (upscaled to 16x16)."""
from __future__ import annotations

import contextlib
import copy
import logging
from argparse import Namespace

import numpy as np
import pytest
import timm
import torch

from backends.base import predict
from backends.executorch.agent import ExecuTorch
from backends.executorch.export import export
from backends.executorch.quantize import quantize
from backends.executorch.runner import ExecuTorchRunner, profile_layers
from conftest import model_with_an_unknown_op
from pipeline.core.errors import UserError
from targets.agent.schedule import throughput

SHAPE = (1, 16, 16)
MAX_BATCH = 32  # above 15, the bound lowering a stride-2 conv would otherwise leave


@pytest.fixture(scope="module")
def digits():
    """(train images, train labels, validation images, validation labels), float32 NCHW in [-1, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.kron(data.images.astype(np.float32) / 8 - 1, np.ones((2, 2), np.float32))[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], data.target[order]
    return images[:1297], labels[:1297], images[1297:], labels[1297:]


@pytest.fixture(scope="module")
def model(digits):
    """Trained for 20 epochs (about 5 s, one thread: faster than two for a model this small)."""
    import stages.models  # noqa: F401  (registers convstem_vit_*)

    images, labels = torch.from_numpy(digits[0]), torch.from_numpy(digits[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = timm.create_model("convstem_vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(20):
        order = torch.randperm(len(images))
        for i in range(0, len(images), 64):
            batch = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.set_num_threads(threads)
    return net.eval()


def logits(net, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="module")
def fp32(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("executorch") / "model.pte"
    return path, export(model, SHAPE, path, MAX_BATCH, name="tiny")


def test_export_matches_torch_and_records_what_xnnpack_runs(fp32, model, digits):
    path, record = fp32
    images = digits[2]
    reference = logits(model, images)
    assert (reference.argmax(1) == digits[3]).mean() > 0.7  # learnt: 10 classes, chance is 0.1
    runner = ExecuTorchRunner(path)
    assert runner.max_batch == record["max_batch"] == MAX_BATCH
    out = runner(images)  # 500 images: 16 calls of at most 32
    assert out.shape == reference.shape
    assert np.abs(out - reference).max() < 1e-3
    assert (out.argmax(1) == reference.argmax(1)).mean() == 1.0
    assert np.abs(runner(images[:1]) - out[:1]).max() < 1e-5  # batch 1, and a whole planned batch
    assert np.abs(runner(images[:MAX_BATCH]) - out[:MAX_BATCH]).max() < 1e-5
    assert record["delegated_ops"]["linear"] == 5  # qkv, proj, fc1, fc2 and the head
    assert record["delegated_ops"]["convolution"] == 3
    assert "native_layer_norm" in record["undelegated_ops"]
    assert not {"where", "any.dim", "eq.Scalar"} & set(record["undelegated_ops"])  # the attention is not fused


def test_runner_threads_resize_the_pool_only_with_no_program_loaded(fp32, digits):
    from executorch.extension.pybindings import portable_lib

    runner = ExecuTorchRunner(fp32[0], threads=1)
    assert runner.threads == portable_lib._threadpool_get_thread_count() == 1
    assert ExecuTorchRunner(fp32[0]).threads == 1  # 0: the pool as it is
    with pytest.raises(UserError, match=r"^executorch runs every program on one process-wide threadpool, now 1 "):
        ExecuTorchRunner(fp32[0], threads=2)
    reference = runner(digits[2][:40])
    del runner
    runner = ExecuTorchRunner(fp32[0], threads=2)
    assert portable_lib._threadpool_get_thread_count() == 2
    assert np.abs(runner(digits[2][:40]) - reference).max() < 1e-5


def test_profile_layers_reports_xnnpack_and_portable_ops(fp32, digits):
    profile = profile_layers(fp32[0], digits[2][:1], threads=1, runs=5, warmup=1)
    kernels = {(entry["kernel"], entry["op_type"]) for entry in profile["by_op_type"]}
    assert ("xnnpack", "Fully Connected (NC, F32) GEMM") in kernels and ("portable", "native_layer_norm") in kernels
    assert profile["runs"] == 5 and 0 < profile["layers_ms"] <= profile["run_ms"]
    assert abs(sum(entry["share"] for entry in profile["layers"]) - 1) < 1e-6


def test_the_agent_reads_etdump_without_exir_package_code(fp32, digits):
    """In a fresh process (as the agent runs), a .pte's ETDump profile is read with executorch.devtools' and exir's
    package code stood in for (5 s of imports otherwise): the same layers, nothing of exir left imported, and a
    later full import of both packages still works."""
    import subprocess
    import sys

    script = f"""
import sys, numpy as np
from backends.executorch.agent import ExecuTorch
runner = ExecuTorch({str(fp32[0])!r}, 1, profile=True)
profile = runner.profile(np.load(sys.argv[1]))
assert not [m for m in sys.modules if m.startswith(("executorch.exir", "executorch.devtools"))]
import executorch.devtools, executorch.exir
assert executorch.devtools.Inspector and executorch.exir.to_edge and executorch.exir._serialize._flatbuffer
print(sorted({{(e["kernel"], e["op_type"]) for e in profile["by_op_type"]}}), profile["runs"])
"""
    images = fp32[0].with_name("images.npy")
    np.save(images, digits[2][:1])
    out = subprocess.run([sys.executable, "-c", script, str(images)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "('xnnpack', 'Fully Connected (NC, F32) GEMM')" in out.stdout and "('portable', 'native_layer_norm')" \
        in out.stdout and out.stdout.split()[-1] == "50"


def test_int8_meets_the_budget_and_is_smaller(model, fp32, digits, tmp_path, caplog):
    train, _, images, labels = digits
    path = tmp_path / "model_int8.pte"
    caplog.set_level(logging.INFO, logger="backends.fallback")
    result = quantize(model, SHAPE, path, train[:256], images, labels, 2.0, 2, True, max_batch=MAX_BATCH)
    assert result["met"] and result["excluded"] == [] and caplog.messages == []
    stand_in, program = result["steps"]  # the fake-quantized graph, then the one program lowered
    assert (stand_in["judged"], program["judged"]) == ("stand-in", "file") and result["stopped"] == "within budget"
    int8_top1 = 100 * (predict(ExecuTorchRunner(path), [images]).argmax(1) == labels).mean()
    assert result["fp32_top1"] > 70 and abs(result["fp32_top1"] - int8_top1 - program["drop"]) < 1e-3
    assert abs(stand_in["drop"] - program["drop"]) <= 100 / len(labels) + 1e-9  # the stand-in tracks it: an image
    assert path.stat().st_size < 0.7 * fp32[0].stat().st_size
    assert result["op_types"]["linear"] == 5 and result["op_types"]["convolution"] == 3


@pytest.mark.slow
def test_fallback_keeps_a_sabotaged_layer_in_float(model, digits, tmp_path, caplog):
    """One channel of the final norm scaled by 1000 and undone in the head's weights: fp32 is unchanged, but
    the per-tensor INT8 range of the head's input is ruined. Static (max_batch 1): lowering is faster."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.norm.weight[0] *= 1000
        model.norm.bias[0] *= 1000
        model.head.weight[:, 0] /= 1000
    train, _, images, labels = digits
    caplog.set_level(logging.INFO, logger="backends.fallback")
    result = quantize(model, SHAPE, tmp_path / "s.pte", train[:256], images, labels, 2.0, 3, True, max_batch=1)
    first, last = result["steps"][0]["drop"], result["steps"][-1]["drop"]
    assert first > 20, "the sabotage should have hurt INT8"
    assert result["met"] and last <= 2.0 and result["excluded"] == ["head"]
    assert [(step["excluded"], step["judged"]) for step in result["steps"]] == [
        ([], "stand-in"), (["head"], "stand-in"), (["head"], "file")]  # one program lowered
    assert abs(result["steps"][-2]["drop"] - last) <= 100 / len(labels) + 1e-9
    ranked = [entry["relative_mse"] for entry in result["sensitivity"]]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] > 100 * ranked[1]
    assert result["sensitivity"][0]["node"] == "head" and len(ranked) == 8  # 3 convs, 5 linears
    assert caplog.messages[-1] == "keeping head in float"


def _damaged(path, tmp_path, how: str):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[:len(data) // 2]
    elif how == "random":
        data = bytearray(np.random.default_rng(0).bytes(4096))
    else:  # flipped bytes at an offset: the file identifier, or inside the program's flatbuffer
        offset = int(how.removeprefix("flipped@"))
        data[offset:offset + 16] = bytes(b ^ 0xFF for b in data[offset:offset + 16])
    bad = tmp_path / "bad.pte"
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("how", ["truncated", "random", "flipped@4", "flipped@200"])
def test_a_damaged_program_is_refused_in_one_line(fp32, tmp_path, how):
    with pytest.raises(UserError, match=r"^executorch cannot load bad\.pte: ") as error:
        ExecuTorchRunner(_damaged(fp32[0], tmp_path, how))
    assert "\n" not in str(error.value)


def test_a_wrong_image_size_is_one_line(fp32):
    with pytest.raises(UserError, match=r"^executorch cannot run model\.pte: it takes images of shape \(1, 16, 16\), "
                                        r"not \(1, 20, 20\)$"):
        ExecuTorchRunner(fp32[0])(np.zeros((1, 1, 20, 20), np.float32))


def test_an_op_without_a_lowering_names_the_op(tmp_path):
    with pytest.raises(UserError, match=r"^ExecuTorch export of odd_net failed: .*riddle") as error:
        export(model_with_an_unknown_op("manifold_edge_executorch_test::riddle"), (1, 4, 4), tmp_path / "odd.pte",
               4, name="odd_net")
    assert "\n" not in str(error.value)


class SplitHeads(torch.nn.Module):
    """LeViT's attention pattern: q, k, v split off one projection's last dimension. ExecuTorch's edge passes fix
    the batch of such a graph at the example's size (torch 2.14, ExecuTorch 1.5; EfficientViT does the same)."""

    def __init__(self, dim: int = 8, heads: int = 2, head_dim: int = 2):
        super().__init__()
        self.qkv, self.heads, self.head_dim = torch.nn.Linear(dim, heads * 3 * head_dim), heads, head_dim

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.heads, -1).split([self.head_dim] * 3, dim=3)
        attention = (q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1)).softmax(-1)
        return (attention @ v.permute(0, 2, 1, 3)).transpose(1, 2).reshape(b, n, -1)


def test_a_graph_whose_lowering_fixes_the_batch_is_planned_for_one_image_also_in_int8(tmp_path, caplog):
    net = SplitHeads().eval()
    with caplog.at_level(logging.WARNING, logger="backends.executorch.export"):
        record = export(net, (4, 8), tmp_path / "split.pte", MAX_BATCH, name="split_heads")
    assert record["max_batch"] == 1
    assert "lowering split_heads fixes its batch dimension" in caplog.text
    x = np.random.default_rng(0).standard_normal((40, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(ExecuTorchRunner(tmp_path / "split.pte")(x), logits(net, x), atol=1e-5)
    labels = logits(net, x).argmax(1)
    int8 = quantize(net, (4, 8), tmp_path / "split_int8.pte", x, x, labels, max_drop=100.0, max_fallback_layers=0,
                    per_channel=True, max_batch=record["max_batch"], name="split_heads")
    assert int8["max_batch"] == 1 and int8["op_types"].get("linear") == 1
    assert (predict(ExecuTorchRunner(tmp_path / "split_int8.pte"), [x]).argmax(1) == labels).mean() > 0.8
    agent = ExecuTorch(str(tmp_path / "split_int8.pte"), 1)  # the benchmark's throughput: at the batch planned
    settings = Namespace(throughput_batch=8, input_size=None, max_seconds=0.1)
    figure = throughput(agent, settings, np.random.default_rng(0))
    assert figure["batch"] == 1 and figure["images_per_s"] > 0 and "error" not in figure


class PaddedConvs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second, self.head = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.second(torch.nn.functional.pad(self.first(x), (1, 1, 1, 1))).mean((2, 3)))


def test_int8_keeps_constant_pads_off_xnnpack(tmp_path):
    """XNNPACK takes pads in fp32 only; a delegated pad in an INT8 program of a Swin student made the program fail
    to load ("Failed to create StaticConstantPad node")."""
    torch.manual_seed(0)
    net = PaddedConvs().eval()
    images = np.random.default_rng(0).standard_normal((48, 1, 8, 8)).astype(np.float32)
    labels = logits(net, images).argmax(1)
    record = quantize(net, (1, 8, 8), tmp_path / "padded_int8.pte", images[:16], images, labels, max_drop=100.0,
                      max_fallback_layers=0, per_channel=True, max_batch=8)
    assert record["undelegated_ops"] == {"constant_pad_nd": 1, "mean.dim": 1}
    assert (predict(ExecuTorchRunner(tmp_path / "padded_int8.pte"), [images]).argmax(1) == labels).mean() > 0.8


class Upsampled(torch.nn.Module):
    """MobileViT's pattern: a strided conv, then bilinear upsampling back to the input's size."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        up = torch.nn.functional.interpolate(self.conv(x), size=(8, 8), mode="bilinear", align_corners=False)
        return self.head(up.flatten(1))


def test_bilinear_upsampling_lowers_where_xnnpack_leaves_it_out(tmp_path, monkeypatch):
    """XNNPACK keeps upsample_bilinear2d from decomposition, but its check fails the node on a dynamic batch: the
    lowering takes ExecuTorch's per-node check path at once, and the check stays with every later call (answered
    without it, ExecuTorch required the op delegated: "was not decomposed or delegated", every MobileViT failed to
    export). One lowering, and the program matches torch."""
    import executorch.exir

    lowerings = []
    lower = executorch.exir.to_edge_transform_and_lower
    monkeypatch.setattr(executorch.exir, "to_edge_transform_and_lower",
                        lambda *args, **kwargs: lowerings.append(1) or lower(*args, **kwargs))
    torch.manual_seed(0)
    net = Upsampled().eval()
    images = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    export(net, (1, 8, 8), tmp_path / "upsampled.pte", 8, name="upsampled")
    assert len(lowerings) == 1
    got = predict(ExecuTorchRunner(tmp_path / "upsampled.pte"), [images])
    np.testing.assert_allclose(got, logits(net, images), atol=1e-4)


def test_the_lowering_verifies_the_program_it_writes_not_each_intermediate_one(tmp_path, monkeypatch):
    """Lowering builds a program per graph pass; the verifiers run on the final edge program (and in
    to_executorch), not on each of the others: on this small model 2 checks where there were 39."""
    from torch.export.exported_program import ExportedProgram

    checked = []
    validate = ExportedProgram.validate
    monkeypatch.setattr(ExportedProgram, "validate", lambda self: checked.append(self) or validate(self))
    torch.manual_seed(0)
    net = Upsampled().eval()
    export(net, (1, 8, 8), tmp_path / "upsampled.pte", 8, name="upsampled")
    assert 1 <= len(checked) <= 6, len(checked)
    assert any(v.dialect == "EDGE" for program in checked for v in program.verifiers)  # the edge program's


def test_int8_conversion_leaves_no_conv_batch_norm_pair_to_fold():
    """convert_pt2e's folding of quantization-aware-training conv + batch-norm patterns is skipped
    (_no_qat_folding: it traced ~90 pattern graphs per call whenever any batch norm was left). Safe because
    post-training preparation already folds each conv's batch norm: in the converted module of a model with
    both kinds, the BatchNorm1d before a Linear (EfficientViT's head) is left and no convolution feeds it."""
    from torchao.quantization.pt2e import quantize_pt2e

    from backends.executorch.export import _capture
    from backends.executorch.quantize import _fake_quantized, _quantizer

    fold = quantize_pt2e._fold_conv_bn_qat
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(144),
                        nn.Linear(144, 3)).eval()
    converted = _fake_quantized(_capture(net, (1, 8, 8), 1).module(), np.random.default_rng(0).standard_normal(
        (8, 1, 8, 8)).astype(np.float32), _quantizer(per_channel=True), 1)
    norms = [n for n in converted.graph.nodes if "batch_norm" in str(n.target)]
    assert len(norms) == 1 and quantize_pt2e._fold_conv_bn_qat is fold
    before = {str(n.target) for norm in norms for n in norm.all_input_nodes}
    assert not any("convolution" in name or "conv2d" in name for name in before), before


class EveryPassHasWork(torch.nn.Module):
    """Something for most of XNNPACK's passes to rewrite: conv + batch norm + relu, max pooling, PReLU, bilinear
    upsampling, a 1-d conv, hardtanh, a cat of six, a linear."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.PReLU())
        self.line = nn.Conv1d(4, 4, 3, padding=1)
        self.head = nn.Linear(6 * 4 * 64, 3)

    def forward(self, x):
        x = torch.nn.functional.interpolate(self.stem(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        y = torch.nn.functional.hardtanh(self.line(x.flatten(2)))
        return self.head(torch.cat([y, y + 1, y * 2, y - 1, y.abs(), y.neg()], dim=1).flatten(1))


@pytest.mark.parametrize("net", ["tiny student", "every pass"])
def test_xnnpack_passes_with_nothing_to_rewrite_are_skipped_for_the_same_program(model, net, tmp_path, monkeypatch):
    """_xnnpack_passes_with_work runs on each partition only the XNNPACK passes that find what they rewrite: the
    .pte comes out byte for byte as with every pass, on the test student and on a model that gives most passes
    work (each of those passes ran on some partition); and on the student it skips the ones it has no use for."""
    from backends.executorch import export as et_export

    torch.manual_seed(0)
    module, shape, batch = (model, SHAPE, MAX_BATCH) if net == "tiny student" else (EveryPassHasWork().eval(),
                                                                                    (1, 8, 8), 1)
    idle = et_export._idle
    skipped, ran = set(), set()

    def counted(xnnpack_pass, graph_module) -> bool:
        nothing = idle(xnnpack_pass, graph_module)
        (skipped if nothing else ran).add(xnnpack_pass.__name__)
        return nothing

    monkeypatch.setattr(et_export, "_idle", counted)
    export(module, shape, tmp_path / "some.pte", batch)
    monkeypatch.setattr(et_export, "_xnnpack_passes_with_work", contextlib.nullcontext)
    export(module, shape, tmp_path / "all.pte", batch)
    assert (tmp_path / "some.pte").read_bytes() == (tmp_path / "all.pte").read_bytes()
    if net == "tiny student":
        assert {"ConvertToSDPAPass", "ConvertToUpsampleBilinear2d", "PReLUReshapePass"} <= skipped - ran
    else:
        # (the partitioner keeps prelu and max_pool2d whole: PReLUReshapePass and RemoveGetItemPass match their
        # decompositions only)
        assert {"FuseBatchNormPass", "FuseActivationPass", "Conv1dUnsqueezePass", "DecomposeConcatenate",
                "ConvertToUpsampleBilinear2d", "RemoveRedundantCopyPass"} <= ran, " ".join(sorted(ran))
