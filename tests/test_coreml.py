"""Core ML packages, checked as far as Linux allows: spec, op set, compressed weights, and accuracy
simulated by interpreting the package's own ML program in torch. Prediction through Core ML itself
runs only on macOS."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import timm
import torch

from backends.base import parity
from backends.coreml import CoreMLExportConfig, CoreMLVariant
from backends.coreml import ops as coreml_ops
from backends.coreml import program as coreml_program
from backends.coreml.export import export_coreml
from backends.coreml.package import coremltools, inspect_package, mil_program, read_weights
from backends.coreml.quantize import compress, kmeans_palette
from backends.coreml.runner import IS_MACOS, CoreMLRunner, CoreMLSimulatedRunner, NotSimulated
from conftest import artifact_folder, read_report
from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.core.numerics import floating
from pipeline.report.markdown import _artifact_lines
from pipeline.ship import choose_records
from stages.batches import load_dataset
from stages.models import load_model

MEAN, STD = [0.286], [0.353]
# Small timm families beyond the ViT student: conv+BN fused (CNNs), a folded relative position bias
# (Swin), hard-swish and squeeze-excite (MobileNetV3): name -> (timm model, overrides, image size,
# precisions converted; MobileNetV3 at fp16 only, to keep conversion time down).
ZOO = {"resnet18": ("resnet18", dict(layers=(1, 1, 1, 1)), 32, ("fp32", "fp16")),
       "swin": ("swin_tiny_patch4_window7_224",
                dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1, 1, 1),
                     num_heads=(1, 1, 2, 2)), 32, ("fp32", "fp16")),
       "mobilenetv3": ("mobilenetv3_small_050", {}, 32, ("fp16",))}


class Scaled(torch.nn.Module):
    """A randomly initialised model with its logits scaled to a trained model's range (std about 3),
    so fp16 rounding is judged on realistic logits rather than near-ties around zero."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor):
        super().__init__()
        self.model = model.eval()
        with torch.no_grad():
            self.scale = 3 / float(model(images).std())

    def forward(self, x):
        return self.model(x) * self.scale


def convert(model, name: str, img: int, path, precision: str) -> None:
    meta = {"mean": MEAN, "std": STD, "channels": 1, "img_size": img, "classes": [f"c{i}" for i in range(10)]}
    export_coreml(model, {"model": name, "kwargs": {}}, meta, CoreMLExportConfig(precision=precision), path, "test")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Each model with 32 random images (normalised), its torch logits, and its packages by precision."""
    folder = tmp_path_factory.mktemp("zoo")
    models = {}
    for key, (name, overrides, img, precisions) in ZOO.items():
        torch.manual_seed(0)
        pixels = torch.randint(0, 256, (32, 1, img, img), generator=torch.Generator().manual_seed(1)).float()
        images = (pixels / 255 - MEAN[0]) / STD[0]
        model = Scaled(timm.create_model(name, in_chans=1, num_classes=10, **overrides), images)
        with torch.no_grad():
            reference = model(images).numpy()
        packages = {p: folder / f"{key}_{p}.mlpackage" for p in precisions}
        for precision, path in packages.items():
            convert(model, name, img, path, precision)
        models[key] = {"images": images.numpy(), "reference": reference, **packages}
    return models


@pytest.mark.parametrize("key", list(ZOO))
def test_simulation_runs_each_models_own_program(zoo, key):
    """The interpreter runs the program itself, so models whose weights do not map back to torch
    parameters (fused conv+BN, Swin's folded bias table) simulate too: fp32 matches torch closely,
    fp16 within its rounding."""
    case = zoo[key]
    if "fp32" in case:
        fp32 = CoreMLSimulatedRunner(case["fp32"])(case["images"])
        assert np.abs(fp32 - case["reference"]).max() < 1e-3
    fp16 = CoreMLSimulatedRunner(case["fp16"])(case["images"])
    diff = np.abs(fp16 - case["reference"]).max()
    assert 0 < diff < 0.05 and (fp16.argmax(1) == case["reference"].argmax(1)).mean() >= 0.9


class Resizing(torch.nn.Module):
    """Every resize a hybrid ViT uses (MobileViT interpolates when its patches do not tile the map):
    bilinear to a non-integer size, half-pixel and aligned corners, and nearest by 2."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, stride=2)
        self.head = torch.nn.Linear(4 * (10 * 10 + 9 * 9 + 14 * 14), 10)

    def forward(self, x):
        x = self.conv(x)  # 7x7
        parts = [torch.nn.functional.interpolate(x, size=(10, 10), mode="bilinear", align_corners=False),
                 torch.nn.functional.interpolate(x, size=(9, 9), mode="bilinear", align_corners=True),
                 torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")]
        return self.head(torch.cat([p.flatten(1) for p in parts], 1))


def test_core_ml_parity_is_relative_to_the_logits():
    """fp16 error scales with the values: a 0.3 difference on logits near 200 is 0.15%, within the default 3%."""
    reference = np.array([[200.0, -150.0, 3.0]])
    check = parity(reference, reference + [[0.3, 0.0, 0.0]])
    assert check["max_abs_diff"] == pytest.approx(0.3) and check["max_rel_diff"] == pytest.approx(0.0015)
    assert check["max_rel_diff"] < CoreMLExportConfig().parity_max_rel_diff


def test_resizing_ops_follow_torch(tmp_path):
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (8, 1, 16, 16)).float()
    model, images = Resizing().eval(), (pixels / 255 - MEAN[0]) / STD[0]
    convert(model, "resizing", 16, tmp_path / "r.mlpackage", "fp32")
    with torch.no_grad():
        reference = model(images).numpy()
    assert np.abs(CoreMLSimulatedRunner(tmp_path / "r.mlpackage")(images.numpy()) - reference).max() < 1e-4


def test_vmap_and_per_image_runs_agree(zoo):
    runner = CoreMLSimulatedRunner(zoo["swin"]["fp32"])
    batched = runner(zoo["swin"]["images"])
    runner.program.vmap = False
    np.testing.assert_allclose(runner(zoo["swin"]["images"]), batched, atol=1e-5)


def _decompressed_in_numpy(op) -> np.ndarray:
    """A compressed weight from what the package stores, without coremltools' decompression: an iOS16/17
    palette (entries indexed by nbits-wide indices, packed from the least significant bit) or int8 data
    with a zero point and a scale per output channel."""
    if op.op_type == "constexpr_lut_to_dense":
        lut, shape = op.lut.val, op.shape.val
        nbits, size = int(np.log2(lut.size)), int(np.prod(shape))
        bits = np.unpackbits(op.indices.val, bitorder="little")[:size * nbits].reshape(size, nbits)
        return lut[bits @ (1 << np.arange(nbits))].reshape(shape)
    assert op.op_type == "constexpr_affine_dequantize"
    data, axis = op.quantized_data.val, int(op.axis.val)
    column = [-1 if i == axis else 1 for i in range(data.ndim)]
    zero, scale = op.zero_point.val.reshape(column), op.scale.val.reshape(column)
    return (data.astype(np.float32) - zero.astype(np.float32)) * scale


def test_compressed_packages_run_with_their_decompressed_weights(zoo, tmp_path):
    """An INT8 and a 4-bit palette package simulate exactly as the float package's program does with its
    weights replaced by the compressed package's, decompressed here in numpy from the stored palette and
    indices (or int8 data and scales). Compressing again with one BLAS/OpenMP thread writes the same bytes
    (k-means palettes are deterministic). Both move the logits, the 4-bit palette more than INT8. No argmax
    bar: how many of 32 images a random ResNet's 4-bit palette keeps is a property of its weights, not of
    this code (25 of 32 with scikit-learn's palette on one host, 29 on another; 28 with ours)."""
    from threadpoolctl import threadpool_limits

    case = zoo["resnet18"]
    fp32 = CoreMLSimulatedRunner(case["fp32"])(case["images"])
    diffs = {}
    for variant in (CoreMLVariant(name="int8", kind="linear"), CoreMLVariant(name="p4", kind="palettize", nbits=4,
                                                                              granularity="per_tensor")):
        package = tmp_path / f"{variant.name}.mlpackage"
        compress(case["fp32"], package, variant)
        assert inspect_package(package, "iOS17")["compressed_weights"]
        logits = CoreMLSimulatedRunner(package)(case["images"])
        diffs[variant.name] = np.abs(logits - fp32).max()

        stored = {op.name.rsplit("_", 1)[0]: _decompressed_in_numpy(op)  # const_2_palettized -> const_2
                  for op in mil_program(package).functions["main"].operations if op.op_type.startswith("constexpr_")}
        program = mil_program(case["fp32"])
        substituted = CoreMLSimulatedRunner(case["fp32"])
        substituted.program = coreml_program.MILProgram(program)
        ops = [o for o in program.functions["main"].operations if o.op_type not in coreml_program.SKIPPED]
        replaced = set()
        for op, step in zip(ops, substituted.program.steps, strict=True):
            for name, var in op.inputs.items():
                source = getattr(var, "op", None)
                if source is not None and source.name in stored:
                    assert step.consts[name].shape == stored[source.name].shape
                    step.consts[name] = torch.from_numpy(stored[source.name])
                    replaced.add(source.name)
        assert replaced == set(stored) and len(replaced) >= 10
        np.testing.assert_allclose(logits, substituted(case["images"]), rtol=0, atol=1e-5)

        if variant.kind == "palettize":
            again = tmp_path / "again.mlpackage"
            with threadpool_limits(1):
                compress(case["fp32"], again, variant)
            files = sorted(f.relative_to(package) for f in package.rglob("*.bin"))
            assert files and all((package / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert 0 < diffs["int8"] < diffs["p4"]


def test_kmeans_palettes_take_the_nearest_entry_and_are_the_same_on_every_host():
    """kmeans_palette is numpy arithmetic in an order the data fixes (a sort, prefix sums, a seeded
    k-means++; no BLAS, no threads), so these digests hold on every host: scikit-learn's KMeans, which
    coremltools' own kmeans mode uses, gave other palettes with another OpenBLAS kernel or thread count.
    Each weight takes its nearest palette entry. (Integer cubes: inputs every platform computes alike.)"""
    x = np.random.default_rng(0).integers(-1000, 1001, size=(128, 128))
    weights = (x ** 3 / 1e9).astype(np.float16)
    digests = []
    for nbits in (2, 4, 6):
        lut, indices = kmeans_palette(weights, nbits)
        assert lut.dtype == np.float16 and lut.shape == (2 ** nbits,) and indices.shape == (weights.size,)
        flat = weights.astype(np.float64).ravel()
        nearest = np.abs(flat[:, None] - lut[None].astype(np.float64)).min(axis=1)
        assert (np.abs(flat - lut[indices].astype(np.float64)) == nearest).all()
        digests.append(hashlib.sha256(lut.tobytes() + indices.tobytes()).hexdigest()[:12])
    assert digests == ["d008bb0cfd9f", "2a6cf8bfe9b6", "61d9731239ef"]


def test_an_op_the_interpreter_lacks_is_named(zoo, monkeypatch):
    for op_type in ("max_pool", "relu"):
        monkeypatch.delitem(coreml_ops.OPS, op_type)
    with pytest.raises(NotSimulated, match=r"^resnet18_fp32.mlpackage cannot be simulated: op max_pool, relu \("):
        CoreMLSimulatedRunner(zoo["resnet18"]["fp32"])


@pytest.fixture(scope="module")
def packages(trained_run):
    export, quantize = artifact_folder(trained_run, "export"), artifact_folder(trained_run, "quantize")
    return {"fp16": export / "model.mlpackage", "int8": quantize / "model_int8.mlpackage",
            "palettize6": quantize / "model_palettize6.mlpackage",
            "palettize4": quantize / "model_palettize4.mlpackage"}


def test_package_spec_metadata_and_op_set(trained_run, packages):
    coreml = json.loads((artifact_folder(trained_run, "export") / "export.json").read_text())["artifacts"]["coreml"]
    package = coreml["package"]
    assert package["target"] == "iOS17" and package["specification_version"] >= 8
    assert package["unsupported_ops"] == []
    assert package["op_counts"]["classify"] == 1  # class labels attached
    meta = package["metadata"]
    spec = json.loads(meta["manifold_edge.model"])
    assert spec["classes"][0] == "T-shirt/top" and meta["manifold_edge.precision"] == "fp16"
    assert meta["manifold_edge.artifact_key"]
    assert coreml["parity"]["evaluation"] == ("measured" if IS_MACOS else "simulated")
    assert coreml["parity"]["max_abs_diff"] < 0.05 and coreml["parity"]["argmax_agreement"] >= 0.99
    sizes = {name: inspect_package(path, "iOS17")["bytes"] for name, path in packages.items()}
    assert sizes["fp16"] > sizes["int8"] > sizes["palettize6"] > sizes["palettize4"]


def test_int8_weights_stay_within_half_a_quantization_step(packages):
    original, compressed = read_weights(packages["fp16"]), read_weights(packages["int8"])
    large = sum(w.size >= 2048 for w in original.values())  # the variants' weight_threshold
    assert large >= 4
    assert inspect_package(packages["int8"], "iOS17")["compressed_weights"] == {"int8 affine": large}
    checked = 0
    for name, w in original.items():
        if w.size < 2048:
            continue
        key = next(k for k in compressed if k.startswith(name.removesuffix("_to_fp16")))
        rows = w.reshape(w.shape[0], -1).astype(np.float64)
        step = np.abs(rows).max(axis=1, keepdims=True) / 127  # symmetric, per output channel
        error = np.abs(compressed[key].reshape(rows.shape) - rows)
        assert (error <= step / 2 * 1.01 + 1e-3).all(), name
        assert not np.array_equal(compressed[key], w)  # it really was quantized
        checked += 1
    assert checked == large


@pytest.mark.parametrize("variant, bits", [("palettize6", 6), ("palettize4", 4)])
def test_palettized_weights_take_the_nearest_palette_entry(packages, variant, bits):
    original, compressed = read_weights(packages["fp16"]), read_weights(packages[variant])
    large = sum(w.size >= 2048 for w in original.values())
    assert inspect_package(packages[variant], "iOS17")["compressed_weights"] == {f"{bits}-bit palette": large}
    for name, w in original.items():
        if w.size < 2048:
            continue
        key = next(k for k in compressed if k.startswith(name.removesuffix("_to_fp16")))
        palette = np.unique(compressed[key].astype(np.float64))  # np.unique on these float16 arrays repeated values
        assert len(palette) <= 2 ** bits
        flat = w.astype(np.float64).ravel()
        nearest = np.abs(flat[:, None] - palette[None, :]).min(axis=1)
        error = np.abs(flat - compressed[key].astype(np.float64).ravel())
        assert (error <= nearest + 2e-3 * np.abs(flat).max()).all(), name


def test_simulated_result_comes_from_the_packages_own_weights(trained_run, packages, tmp_path):
    """Change one weight inside model.mlpackage's weight file: the simulated logits must follow."""
    data = load_dataset(artifact_folder(trained_run, "data"))
    images, _ = data.val.head(64)
    tampered = tmp_path / "model.mlpackage"
    shutil.copytree(packages["fp16"], tampered)
    head = next(w for name, w in read_weights(tampered).items() if name.startswith("model_head_weight"))
    blob = next(tampered.rglob("weight.bin"))
    raw = blob.read_bytes()
    offset = raw.find(head.astype(np.float16).tobytes())
    assert offset > 0
    blob.write_bytes(raw[:offset] + np.float16(60.0).tobytes() + raw[offset + 2:])
    before = CoreMLSimulatedRunner(packages["fp16"])(images)
    after = CoreMLSimulatedRunner(tampered)(images)
    assert np.abs(after - before)[:, 0].max() > 1.0  # head row 0, column 0: class 0's logit moved
    np.testing.assert_allclose(np.delete(after, 0, axis=1), np.delete(before, 0, axis=1), atol=1e-6)


def test_op_set_check_flags_ops_newer_than_the_target(trained_run, tmp_path):
    """An iOS18 package fuses attention into scaled_dot_product_attention, which iOS17 lacks.
    (Converted with a tensor input and fp32 precision, the other two choices.)"""
    model, record = load_model(artifact_folder(trained_run, "distill") / "model.pt")
    meta = json.loads((artifact_folder(trained_run, "data") / "meta.json").read_text())
    cfg = load_config(None, ["export.coreml.target='iOS18'", "export.coreml.input='tensor'",
                             "export.coreml.precision='fp32'", "quantize.coreml.enabled=false"]).export.coreml
    package = tmp_path / "m18.mlpackage"
    export_coreml(model, record, meta, cfg, package, key="test")
    assert inspect_package(package, "iOS18")["unsupported_ops"] == []
    assert "scaled_dot_product_attention" in inspect_package(package, "iOS17")["unsupported_ops"]
    spec = coremltools().models.MLModel(str(package), skip_model_load=True).get_spec()
    assert spec.description.input[0].type.WhichOneof("Type") == "multiArrayType"
    images, _ = load_dataset(artifact_folder(trained_run, "data")).val.head(32)
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    assert np.abs(CoreMLSimulatedRunner(package)(images) - reference).max() < 1e-3  # fp32: near exact


def test_coreml_config_errors():
    with pytest.raises(UserError, match="nbits: got 5, but input should be 1, 2, 3, 4, 6 or 8"):
        load_config(None, ["quantize.coreml.variants=[{name='p', kind='palettize', nbits=5}]"])
    with pytest.raises(UserError, match="per_block / per_grouped_channel need export.coreml.target iOS18"):
        load_config(None, ["quantize.coreml.variants=[{name='b', kind='linear', granularity='per_block'}]"])
    with pytest.raises(UserError, match="quantize.coreml.enabled needs export.coreml.enabled"):
        load_config(None, ["export.coreml.enabled=false"])


def test_report_labels_core_ml_rows(trained_run):
    rows = [r for r in read_report(trained_run)["evaluation"]["artifacts"] if r["runtime"] == "coreml"]
    assert len(rows) == 4 and {r["evaluation"] for r in rows} == {"measured" if IS_MACOS else "simulated"}
    assert all(abs(r["delta_top1"]) <= 5.0 for r in rows)
    if not IS_MACOS:
        assert "Core ML prediction needs macOS" in (trained_run / "runs" / "default" / "report.md").read_text()


@pytest.mark.skipif(not IS_MACOS, reason="Core ML prediction needs macOS (coremltools cannot predict on Linux)")
def test_core_ml_prediction_matches_the_simulation_on_macos(trained_run, packages):
    images, _ = load_dataset(artifact_folder(trained_run, "data")).val.head(32)
    measured = CoreMLRunner(packages["fp16"])(images)
    simulated = CoreMLSimulatedRunner(packages["fp16"])(images)
    assert (measured.argmax(1) == simulated.argmax(1)).mean() >= 0.95


def test_a_not_simulated_row_is_reported_and_nothing_ships_in_its_runtime():
    """Evaluate writes a row without top-1 for a package the simulation cannot run; the report lists it
    with its reason, and the Core ML target says why nothing ships there."""
    reason = "model.mlpackage cannot be simulated: op topk (the Linux Core ML simulation has no implementation of it)"
    rows = [{"artifact": "torch_fp32", "runtime": "torch", "precision": "fp32", "numerics": floating("fp32"),
             "evaluation": "measured",
             "top1": 88.0, "delta_top1": 0.0, "agreement": 1.0, "bytes": 10 ** 6},
            {"artifact": "coreml", "runtime": "coreml", "precision": "fp16", "numerics": floating("fp16"),
             "evaluation": "not simulated",
             "reason": reason, "bytes": 5 * 10 ** 5, "op_types": None}]
    table = "\n".join(_artifact_lines(rows, None))
    assert "| `coreml` | coreml | fp16 | not simulated | - | - | - | 0.50 | - |" in table
    assert f"Not simulated: {reason}." in table
    choice = choose_records("iphone", {"runtime": "coreml"}, [], {"artifacts": rows, "images": 100}, max_drop=1.0)
    assert choice["artifact"] is None and choice["why"] == f"no coreml artifact has a top-1: {reason}"


def test_ops_no_zoo_model_uses_agree_with_coremltools_value_inference():
    """Ops built on constants get their value from coremltools' own numpy value inference: the torch
    table must give the same. (concat's value inference ignores interleave: its docstring example.)"""
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(0)
    x, pos = rng.normal(size=(2, 3, 5, 6)).astype(np.float32), rng.uniform(0.1, 2, size=(2, 3)).astype(np.float32)
    ints = lambda *v: np.array(v, np.int32)  # noqa: E731
    built = []

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=coremltools().target.iOS17)
    def program(unused):
        built.extend(v.op for v in [
            mb.pad(x=x, pad=ints(1, 2, 0, 3), constant_val=np.float32(0.5)),
            mb.pad(x=x, pad=ints(1, 2, 2, 1), mode="reflect"),
            mb.pad(x=x, pad=ints(0, 1, 2, 3, 1, 0), mode="replicate"), mb.tile(x=pos, reps=ints(2, 3)),
            mb.gather(x=x, indices=np.array([[0, 2], [-1, 1]], np.int32), axis=1),
            mb.slice_by_index(x=x, begin=ints(0, 1, 0, 5), end=ints(2, 3, 5, 0), stride=ints(1, 1, 2, -2)),
            mb.slice_by_index(x=x, begin=ints(1, 0, 1, 0), end=ints(2, 3, 4, 6),
                              squeeze_mask=[True, False, False, False], end_mask=[False, True, False, True]),
            mb.slice_by_size(x=x, begin=ints(0, 1, -3, 2), size=ints(-1, 2, 2, -1)),
            mb.layer_norm(x=x, axes=[1, 3], gamma=rng.normal(size=(3, 6)).astype(np.float32), epsilon=np.float32(1e-3)),
            mb.gelu(x=x, mode="TANH_APPROXIMATION"), mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"),
            mb.thresholded_relu(x=x.copy(), alpha=np.float32(0.3)),  # its value inference writes into x
            mb.clip(x=x, alpha=np.float32(-0.5), beta=np.float32(0.7)), mb.rsqrt(x=pos), mb.inverse(x=pos),
            mb.log(x=pos), mb.elu(x=x, alpha=np.float32(0.7)), mb.softplus(x=x), mb.reduce_max(x=x, axes=[2]),
            mb.reduce_sum(x=x, axes=[0, -1], keep_dims=True), mb.matmul(x=x, y=x, transpose_x=True),
            mb.floor_div(x=x, y=np.float32(0.3)), mb.reshape(x=x, shape=[0, -1, 3, 2]),
            mb.cast(x=x * 3, dtype="int32")])
        return unused

    for op in built:
        step = coreml_program._step(op)
        np.testing.assert_allclose(step.fn(step.consts, step.shapes).numpy(), op.outputs[0].val, atol=1e-5,
                                   err_msg=op.op_type)
    pairs = [np.array([[1, 2], [3, 4], [5, 6]], np.float32), np.array([[7, 8], [9, 10], [11, 12]], np.float32)]
    interleaved = coreml_ops.OPS["concat"]({"values": [torch.from_numpy(p) for p in pairs], "axis": 0,
                                                "interleave": True}, [(6, 2)])
    assert interleaved[:, 0].tolist() == [1, 7, 3, 9, 5, 11]
